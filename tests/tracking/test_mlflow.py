"""The MLflow bridge against real MLflow: a ``sqlite:`` store, and a real ``mlflow server`` started here.

Read back through ``MlflowClient``: params, every metric step, tags, artifacts, status, parent/child links.
MLflow is slow to import and to start, so the tests are few and share one server (stopped by its pid).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FIT, Project

import mltrain
from mltrain.cli.main import main

pytestmark = pytest.mark.integration
mlflow = pytest.importorskip("mlflow", reason="pip install 'mltrain[mlflow]'")



def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` (sqlite backend, proxied artifacts), stopped by the pid it was started with."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and the workers it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def _runs(uri: str, experiment: str) -> list[Any]:
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def _history(uri: str, run_id: str, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow.MlflowClient(uri).get_metric_history(run_id, name))


def test_a_run_is_mirrored_live_and_exports_are_idempotent(in_project: Project, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    in_project.write("fit.py", FIT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = mltrain.submit(["tracking.mlflow_uri=" + uri], script="fit.py", params={"lr": 0.5}, detach=False)
    assert run.status == "Completed"
    state = run.record.mlflow
    assert state is not None and (state["state"], state["error"]) == ("done", None)

    experiment = run.record.experiment
    [found] = _runs(uri, experiment)
    client = mlflow.MlflowClient(uri)
    assert found.info.run_id == state["run_id"]
    assert found.info.status == "FINISHED" and found.info.end_time >= found.info.start_time
    assert found.data.params["lr"] == "0.5" and found.data.params["compute.type"] == "local"
    tags = found.data.tags
    assert (tags["mltrain.run_id"], tags["mltrain.target"], tags["mlflow.runName"]) == (run.id, "local", run.id)
    assert tags["mltrain.snapshot"] == run.record.snapshot_id and tags["mlflow.source.name"] == "fit.py"
    assert _history(uri, found.info.run_id, "acc") == [(0, 0.5), (1, 1.0), (2, 1.5), (3, 2.0)]
    assert _history(uri, found.info.run_id, "loss") == [(3, 0.5)]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.yaml", "output.log", "outputs"} <= artifacts
    assert [a.path for a in client.list_artifacts(found.info.run_id, "outputs")] == ["outputs/model.txt"]

    for _ in range(2):  # again, and to a second store: one MLflow run each, every point once
        assert main(["runs", "export", "--mlflow", uri, run.id]) == 0
        assert main(["runs", "export", "--mlflow", f"sqlite:///{tmp_path / 'other.db'}", "--all"]) == 0
    assert main(["runs", "export", "--mlflow", f"sqlite:///{tmp_path / 'other.db'}", "--experiment", experiment]) == 0
    assert "exported 1 run to" in capsys.readouterr().out
    for store_uri in (uri, f"sqlite:///{tmp_path / 'other.db'}"):
        [again] = _runs(store_uri, experiment)
        assert _history(store_uri, again.info.run_id, "acc") == [(0, 0.5), (1, 1.0), (2, 1.5), (3, 2.0)]
    assert run.record.mlflow == state | {"updated": run.record.mlflow["updated"]}  # its own mirror's record


def test_a_sweep_is_a_parent_with_nested_trials_on_a_server(project: Project, mlflow_server: str) -> None:
    project.write("fit.py", FIT)
    project.run("-m", "script=fit.py", "params.lr=0.1,0.3,0.2", "sweep.primary_metric=acc", "sweep.goal=max",
                f"tracking.mlflow_uri={mlflow_server}", check=True)
    found = _runs(mlflow_server, project.root.name)
    parents = [r for r in found if "mltrain.sweep_id_parent" in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.data.params["sweep.primary_metric"] == "acc"
    best = [c for c in children if c.data.tags.get("mltrain.best") == "true"]
    assert [b.data.params["lr"] for b in best] == ["0.3"]
    assert parent.data.tags["mltrain.best_run_id"] == best[0].data.tags["mltrain.run_id"]
    assert parent.info.status == "FINISHED"
    for child in children:
        assert child.info.status == "FINISHED"
        assert len(_history(mlflow_server, child.info.run_id, "acc")) == 4
    client = mlflow.MlflowClient(mlflow_server)
    assert [a.path for a in client.list_artifacts(best[0].info.run_id, "outputs")] == ["outputs/model.txt"]


def test_an_unreachable_mlflow_never_fails_the_run_and_export_catches_up(
        in_project: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    in_project.write("fit.py", FIT)
    with socket.socket() as sock:  # bound, never listening: every connection is refused
        sock.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{sock.getsockname()[1]}"
        run = mltrain.submit(script="fit.py", params={"lr": 0.1}, detach=False,
                             overrides=[f"tracking.mlflow_uri={refused}"])
    assert run.status == "Completed"
    state = run.record.mlflow or {}
    assert state["state"] == "failed" and "runs export --mlflow" in state["error"]
    uri = f"sqlite:///{tmp_path / 'later.db'}"
    assert main(["runs", "export", "--mlflow", uri, run.id]) == 0
    [found] = _runs(uri, run.record.experiment)
    assert len(_history(uri, found.info.run_id, "acc")) == 4


def test_bad_input_is_one_line(in_project: Project, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    in_project.write("fit.py", FIT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"port {port} on 127.0.0.1 is in use" in err and "--port N" in err

    assert main(["runs", "export"]) == 2
    assert "IDs, --experiment NAME or --all" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if MLflow were not installed
    assert main(["script=fit.py", "tracking.mlflow=true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'mltrain[mlflow]'" in err
    runs = in_project.root / ".mltrain" / "runs"
    assert not runs.exists() or not list(runs.iterdir())  # nothing started
    assert main(["runs", "export", "--mlflow", "sqlite:///x.db", "--all"]) == 2
    assert "mltrain[mlflow]" in capsys.readouterr().err


def test_ui_shows_the_workspace_store_and_stops_with_mltrain(project: Project) -> None:
    import json

    project.write("fit.py", FIT)
    project.run("script=fit.py", "params.lr=0.2", "tracking.mlflow=true", check=True)  # the workspace's own store
    assert (project.root / ".mltrain" / "mlflow.db").exists()
    port = _free_port()
    proc = project.popen("ui", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            request = urllib.request.Request(f"{url}/ajax-api/2.0/mlflow/experiments/search", method="POST",
                                             data=b'{"max_results": 10}', headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=2) as answer:
                names = [e["name"] for e in json.load(answer)["experiments"]]
                break
        except OSError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "mltrain ui did not answer"
            time.sleep(0.5)
    assert project.root.name in names
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    with socket.socket() as sock:  # the server went with it: nothing listens on the port
        # SO_REUSEADDR: a connection the server closed first lingers in TIME_WAIT on the port (more often on a
        # loaded machine), which fails a plain bind though no server is left; Linux still refuses the bind
        # while any socket listens there.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1)


WAITS = """
import os, time
import mltrain
mltrain.log_metric("seen", 1.0, step=0)
print("::metric odd$name=2 step=0", flush=True)
while not os.path.exists(os.environ["GO_FILE"]):  # until the test has seen the point in MLflow
    time.sleep(0.1)
mltrain.log_metric("seen", 2.0, step=1)
"""


def test_metrics_reach_mlflow_while_the_run_runs(in_project: Project, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    in_project.write("waits.py", WAITS)
    go = tmp_path / "go"
    monkeypatch.setenv("GO_FILE", str(go))
    uri = f"sqlite:///{tmp_path / 'live.db'}"
    run = mltrain.submit(script="waits.py", overrides=[f"tracking.mlflow_uri={uri}"])
    follower = threading.Thread(target=run.wait)
    follower.start()
    try:
        deadline = time.monotonic() + 120
        def arrived() -> list[Any]:
            found = _runs(uri, run.record.experiment)
            if found and all(_history(uri, found[0].info.run_id, name) for name in ("seen", "odd_name")):
                return found
            return []

        while not (found := arrived()):  # "odd$name" is a name MLflow refuses: it arrives as odd_name
            assert time.monotonic() < deadline, "the metrics never reached MLflow while the run ran"
            time.sleep(0.2)
        assert run.status == "Running"  # still waiting for the go file: the points came live
        assert (run.record.mlflow or {})["state"] == "live"
        assert _history(uri, found[0].info.run_id, "odd_name") == [(0, 2.0)]
    finally:
        go.touch()
        follower.join(timeout=120)
    assert run.status == "Completed"
    assert _history(uri, found[0].info.run_id, "seen") == [(0, 1.0), (1, 2.0)]
