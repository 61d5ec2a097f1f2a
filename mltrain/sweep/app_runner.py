"""The script a job of ``hydra/launcher=mltrain`` runs when the app's task is not a script's ``__main__``.

Copied next to the pickled task (``task.pkl``) and run as ``run_task.py CONFIG_PATH CONFIG_NAME OVERRIDES...``:
it puts the app's import path back (``sys_path.json``), unpickles the task the app sent, and runs it under
``@hydra.main`` as the app would have. Self-contained: it runs wherever the job does.
"""

import json
import pickle
import sys
from pathlib import Path


def main() -> None:
    import hydra

    here = Path(__file__).resolve().parent
    sys.path[1:1] = [p for p in json.loads((here / "sys_path.json").read_text()) if p not in sys.path]
    task = pickle.loads((here / "task.pkl").read_bytes())
    config_path, config_name = sys.argv[1] or None, sys.argv[2] or None
    sys.argv = [sys.argv[0], *sys.argv[3:]]
    hydra.main(version_base=None, config_path=config_path, config_name=config_name)(task)()


if __name__ == "__main__":
    main()
