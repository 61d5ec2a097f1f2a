"""Shared by the Docker tests: a real engine (or a skip that CI turns into a failure) and a project that
labels everything it makes, so each test removes exactly its own containers and images."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Project

BASE_IMAGE = os.environ.get("MLTRAIN_TEST_BASE_IMAGE", "mltrain-test/python:bookworm")
LABEL = "mltrain_test"


@pytest.fixture(scope="session")
def engine() -> Any:
    """The local engine; without one the tests skip (a failure under CI=true), saying how to get one."""
    import docker  # a dependency of mltrain itself: missing is an error, not a skip
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        pytest.skip(f"no Docker engine ({exc}); run `bash .ci/provision-docker.sh` (make provision)")
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"base image {BASE_IMAGE} missing; run `bash .ci/provision-docker.sh` (make provision)")
    return client


class DockerProject(Project):
    """A project whose runs go to the local engine, with the test's label on every container and image."""

    def __init__(self, project: Project, engine: Any) -> None:
        super().__init__(project.root, project.env)
        self.engine = engine
        self.label = uuid.uuid4().hex[:12]

    def overrides(self, *extra: str, build: bool | str = True) -> list[str]:
        """``build``: True (base image + mltrain's Dockerfile), False (the base image as is), or a Dockerfile."""
        label = f"+environment.labels.{LABEL}={self.label}"
        if isinstance(build, str):
            env = ["environment=docker", f"environment.dockerfile={build}", label]
        elif build:
            env = ["environment=docker_python", f"environment.base_image={BASE_IMAGE}", label]
        else:
            env = ["environment=docker", f"environment.image={BASE_IMAGE}"]
        return ["compute=docker", f"+compute.labels.{LABEL}={self.label}", *env, *extra]

    def submit(self, *extra: str, build: bool | str = True, flags: tuple[str, ...] = (), **kwargs: Any) -> Any:
        return self.run(*flags, *self.overrides(*extra, build=build), **kwargs)

    def containers(self) -> list[Any]:
        return list(self.engine.containers.list(all=True, filters={"label": f"{LABEL}={self.label}"}))

    def images(self) -> list[Any]:
        return list(self.engine.images.list(filters={"label": f"{LABEL}={self.label}"}))

    def record(self, run_id: str | None = None) -> dict[str, Any]:
        runs = self.runs()
        if run_id is None:
            return runs[0]
        return next(r for r in runs if r["id"] == run_id)

    def log(self, run_id: str) -> str:
        return (self.workspace / "runs" / run_id / "output.log").read_text()

    def show(self, run_id: str) -> dict[str, Any]:
        return json.loads(self.run("runs", "show", run_id, "--json", check=True).stdout)  # type: ignore[no-any-return]

    def cleanup(self) -> None:
        for container in self.containers():
            container.remove(force=True)
        for image in self.images():
            self.engine.images.remove(image.id, force=True)


@pytest.fixture
def dproject(project: Project, engine: Any) -> Iterator[DockerProject]:
    proj = DockerProject(project, engine)
    try:
        yield proj
    finally:
        proj.cleanup()
