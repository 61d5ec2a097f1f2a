"""Core overheads (issue: core): submit and plan vs a trivial @hydra.main app; runs list at 10k runs; venv cache hit."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, median_seconds, report, run_cmd

BIN = Path(sys.executable).parent
MLTRAIN = str(BIN / "mltrain")

HYDRA_APP = """
import hydra
from omegaconf import DictConfig

@hydra.main(version_base=None, config_path=None, config_name=None)
def main(cfg: DictConfig) -> None:
    pass

if __name__ == "__main__":
    main()
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        project = root / "proj"
        project.mkdir()
        (project / "noop.py").write_text("pass\n")
        (root / "app.py").write_text(HYDRA_APP)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLTRAIN_")}
        env["MLTRAIN_CACHE_DIR"] = str(root / "cache")
        kw = {"cwd": project, "env": env}

        # The composition cache makes every repeat a hit; "cold" turns it off (a first submit, or edited conf).
        cold = {**kw, "env": {**env, "MLTRAIN_COMPOSE_CACHE": "0"}}
        times = interleaved_medians({
            "hydra_app": run_cmd([sys.executable, str(root / "app.py"), "hydra.run.dir=.", "hydra.output_subdir=null"],
                                 **kw),
            "submit": run_cmd([MLTRAIN, "script=noop.py"], **kw),
            "plan": run_cmd([MLTRAIN, "plan", "script=noop.py"], **kw),
            "submit_cold": run_cmd([MLTRAIN, "script=noop.py"], **cold),
            "plan_cold": run_cmd([MLTRAIN, "plan", "script=noop.py"], **cold),
            "help": run_cmd([MLTRAIN, "--help"], **kw),
            "python": run_cmd([sys.executable, "-c", "pass"], **kw),
        })
        hydra_app, submit, plan = times["hydra_app"], times["submit"], times["plan"]
        submit_cold, plan_cold = times["submit_cold"], times["plan_cold"]
        report("submit `mltrain script=noop.py` vs trivial @hydra.main app", submit, hydra_app, "<= 1.5x")
        report("`mltrain plan script=noop.py` vs trivial @hydra.main app", plan, hydra_app, "<= 1.2x")
        report("  submit, composition cache off (first submit)", submit_cold, hydra_app, "(for reference)")
        report("  plan, composition cache off", plan_cold, hydra_app, "(for reference)")
        report("`mltrain --help` vs `python -c pass`", times["help"], times["python"], "imports no Hydra, no SDK")

        sys.path.insert(0, str(Path(__file__).parents[1]))
        from mltrain.store.db import COMPLETED, RUNNING, Store

        ws = root / "bigws"
        ws.mkdir()
        with Store(ws / "runs.db") as store:
            for i in range(10_000):
                run_id = store.create_run(experiment=f"exp{i % 7}", script="train.py", source_dir="/p",
                                          compute="local", environment="user_managed").id
                store.transition(run_id, RUNNING)
                store.transition(run_id, COMPLETED, exit_code=0)
        list_env = {**env, "MLTRAIN_HOME": str(ws)}
        listing = median_seconds(run_cmd([MLTRAIN, "runs", "list"], cwd=project, env=list_env), repeat=5)
        listing_all = median_seconds(run_cmd([MLTRAIN, "runs", "list", "--limit", "0"], cwd=project, env=list_env),
                                     repeat=5)
        report("`mltrain runs list` with 10,000 runs (newest 50)", listing, None, "<= 300 ms")
        report("`mltrain runs list --limit 0` with 10,000 runs (all rows)", listing_all, None, "<= 300 ms")

        from mltrain.environments.venv import Venv, VenvEnvironment

        env_cfg = VenvEnvironment(packages=[], installer="auto")
        os.environ["MLTRAIN_CACHE_DIR"] = str(root / "cache")
        venv_env = Venv(env_cfg, source_dir=project)
        start = time.perf_counter()
        venv_env.prepare(lambda line: None, None)
        build = time.perf_counter() - start
        hit = median_seconds(lambda: Venv(env_cfg, source_dir=project).prepare(lambda line: None, None), repeat=9)
        report("venv preparation, unchanged package list (cache hit)", hit, build, "<= 50 ms (vs first build)")


if __name__ == "__main__":
    main()
