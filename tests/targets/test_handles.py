"""Every target's handle is a frozen dataclass stored as its fields: what a run record keeps rebuilds the same
handle in any later process; what a handle learns reaches the record only through the lifecycle's callback."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mltrain.errors import TargetError
from mltrain.store.db import RUNNING, Store
from mltrain.store.workspace import RunPaths, Workspace
from mltrain.targets import executor_class
from mltrain.targets.base import Handle, bound, handle_for
from mltrain.targets.docker.executor import DockerHandle
from mltrain.targets.docker.util import EngineConfig
from mltrain.targets.local.executor import LocalHandle
from mltrain.targets.spark.executor import SparkHandle
from mltrain.targets.ssh.conn import SshSettings
from mltrain.targets.ssh.executor import SshHandle


def _ssh(paths: RunPaths) -> SshHandle:
    settings = SshSettings(host="gpu-box", port=2222, user="me", key_file="/keys/id", known_hosts="/keys/known",
                           host_key_policy="accept_new", fingerprint="SHA256:abc", connect_timeout=3.0,
                           keepalive=2.5, remote_dir="/srv/ml", python="/usr/bin/python3")
    return SshHandle(paths, "r1", "/srv/ml/runs/r1", 77, "999", "boot-b", ssh=settings, container="mltrain-r1",
                     cancel_grace=4.0)


HANDLES: dict[str, Callable[[RunPaths], Handle]] = {
    "local": lambda paths: LocalHandle(paths, "r1", str(paths.dir), 4242, "12345", "boot-a", cancel_grace=3.5),
    "docker": lambda paths: DockerHandle(
        paths, "c" * 64, "mltrain-r1", EngineConfig(base_url="tcp://engine:2376", tls_verify=True, timeout=5.0),
        keep_container=True, mem_limit="4g", mounted=True, api_version="1.41", cancel_grace=2.0),
    "ssh": _ssh,
    "spark-on-ssh": lambda paths: SparkHandle(
        paths, _ssh(paths), {"master": "spark://m:7077", "deploy_mode": "cluster", "name": "mltrain-r1",
                             "ssh": {"host": "gpu-box"}, "app_id": "app-1"}, cancel_grace=4.0),
    "spark-local": lambda paths: SparkHandle(
        paths, HANDLES["local"](paths), {"master": "local[*]", "deploy_mode": "client"}, cancel_grace=3.5),
}


@pytest.mark.parametrize("name", list(HANDLES))
def test_a_handle_comes_back_from_its_record_unchanged(name: str, tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / ".mltrain").ensure()
    with Store(workspace.db_path) as store:
        run_id = store.create_run(experiment="e", script="s.py", source_dir=str(tmp_path), compute="x",
                                  environment="y").id
        paths = workspace.run_paths(run_id)
        handle = HANDLES[name](paths)
        stored = handle.to_dict()
        assert stored["kind"] == handle.kind and json.loads(json.dumps(stored)) == stored  # plain JSON
        assert not {"paths", "on_update", "scratch", "link", "client"} & set(stored)  # what lives only in a process
        store.transition(run_id, RUNNING, handle=stored)
        again = handle_for(store.get(run_id), workspace)
    assert type(again) is type(handle) and again == handle
    assert again is not None and again.to_dict() == stored and again.paths == paths
    assert executor_class(stored["kind"]).handle_from_dict(stored, paths) == handle


def test_a_stored_handle_may_lack_fields_or_carry_unknown_ones(tmp_path: Path) -> None:
    """Records written by another version: unknown keys are left aside, missing ones take their defaults, and a
    handle that cannot be rebuilt says so in one line."""
    paths = RunPaths(tmp_path / "r1")
    lean = DockerHandle.from_dict({"kind": "docker", "container_id": "0" * 64, "someday": 1,
                                   "engine": {"base_url": "unix:///x.sock", "later": True}}, paths)
    assert lean.engine == EngineConfig(base_url="unix:///x.sock") and lean.label == "0" * 12
    assert lean.cancel_grace == 10.0 and not lean.keep_container
    with pytest.raises(TargetError, match="stored local handle is incomplete"):
        LocalHandle.from_dict({"kind": "local", "pid": 1}, paths)


SPARK_LINE = b"INFO StandaloneSchedulerBackend: Connected to Spark cluster with app ID app-20260101010101-0001\n"


def _spark_run(tmp_path: Path) -> tuple[Workspace, str, SparkHandle]:
    workspace = Workspace(tmp_path / ".mltrain").ensure()
    with Store(workspace.db_path) as store:
        run_id = store.create_run(experiment="e", script="s.py", source_dir=str(tmp_path), compute="spark",
                                  environment="y").id
        paths = workspace.run_paths(run_id)
        paths.dir.mkdir(parents=True)
        paths.log.write_bytes(b"[mltrain] $ spark-submit job.py\n" + SPARK_LINE)
        driver = LocalHandle(paths, run_id, str(paths.dir), 1, "1", "boot")
        handle = SparkHandle(paths, driver, {"master": "spark://m:7077", "deploy_mode": "client"})
        store.transition(run_id, RUNNING, handle=handle.to_dict())
    return workspace, run_id, handle


def test_what_a_handle_learns_reaches_the_record_through_the_callback(tmp_path: Path) -> None:
    workspace, run_id, handle = _spark_run(tmp_path)
    with Store(workspace.db_path) as store:
        bound(handle, store, run_id).poll()  # reads the log: the application's id is in it
        stored = store.get(run_id).handle
    assert stored is not None
    assert stored["spark"]["app_id"] == "app-20260101010101-0001" and stored["spark"]["master"] == "spark://m:7077"
    assert stored["display"] == {"spark app": "app-20260101010101-0001"}
    assert stored["driver"] == handle.driver.to_dict()  # the rest of the record's handle is kept


def test_a_handle_never_opens_the_store_itself(tmp_path: Path) -> None:
    workspace, run_id, handle = _spark_run(tmp_path)
    learnt: list[dict[str, Any]] = []
    handle.poll()  # nobody listens: what it learnt stays in this process
    assert handle.app.app_id == "app-20260101010101-0001"
    dataclasses.replace(handle, on_update=learnt.append).poll()
    with Store(workspace.db_path) as store:
        assert store.get(run_id).handle == handle.to_dict()  # untouched
    assert learnt and learnt[0]["spark"]["app_id"] == "app-20260101010101-0001"
