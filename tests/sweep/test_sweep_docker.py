"""``mltrain -m`` on the Docker target: trials as containers, side by side, metrics back from each."""

# ruff: noqa: F811  (the fixtures imported from dockertest are named as the test arguments)
from __future__ import annotations

import itertools
import json

import pytest
from dockertest import DockerProject, dproject, engine  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

SCRIPT = """
import json, os, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
print("argv", json.dumps(sys.argv[1:]), "uid", os.getuid(), flush=True)
time.sleep(0.5)
print(f"::metric loss={args['--lr']}", flush=True)
sys.exit(1 if args.get("--fail") == "yes" else 0)
"""


def test_sweep_on_docker(dproject: DockerProject) -> None:
    dproject.write("train_docker.py", SCRIPT)
    result = dproject.submit("script=train_docker.py", "params.lr=0.3,0.1", "params.fail=no,yes",
                             "sweep.primary_metric=loss", build=False, flags=("-m",), timeout=240)
    assert result.returncode == 1, result.stderr  # the trials with --fail yes failed; the rest ran
    sweeps = json.loads(dproject.run("sweeps", "list", "--json", check=True).stdout)
    data = json.loads(dproject.run("sweeps", "show", sweeps[0]["id"], "--json", check=True).stdout)
    assert data["settings"]["max_concurrent"] == 4  # the default on a target other than local
    statuses = {" ".join(t["params"]): t["status"] for t in data["trials"]}
    assert statuses == {"params.lr=0.3 params.fail=no": "Completed", "params.lr=0.3 params.fail=yes": "Failed",
                        "params.lr=0.1 params.fail=no": "Completed", "params.lr=0.1 params.fail=yes": "Failed"}
    best = next(t for t in data["trials"] if t["best"])
    assert best["params"] == ["params.lr=0.1", "params.fail=no"] and best["metric"] == pytest.approx(0.1)
    runs = [dproject.record(t["run_id"]) for t in data["trials"]]
    assert all(r["compute"] == "docker" for r in runs)
    spans = sorted((r["started"], r["ended"]) for r in runs)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))  # side by side
    assert 'argv ["--lr", "0.1", "--fail", "no"]' in dproject.log(best["run_id"])
    assert not dproject.containers()  # each container removed once collected
