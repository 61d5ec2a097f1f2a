"""Hydra's plugin-author suites against ``hydra/launcher=mltrain_docker``: every job an mltrain run in a container.

Run by ``test_install_modes.py`` (its name keeps pytest from collecting it), which names the job image
(``$MLTRAIN_TEST_JOB_IMAGE``: Hydra and mltrain in ``/opt/app``) and the folder the suites write in
(``$MLTRAIN_TEST_SHARED``: the tests' base temp dir). That folder is mounted into each container at the same
path, and the launcher told so (``hydra.launcher.shared_paths=true``): the suites read what the jobs write
there, and check the paths the jobs see, as they would for a launcher on a cluster with a shared file system.
The suites' importable task (``tasks.py``) is mounted read-only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from tasks import return_100

CLOSURE = "the suite's task function is a closure, which cannot run in another process (each job is a run)"
HERE = Path(__file__).resolve().parent
SHARED = os.environ.get("MLTRAIN_TEST_SHARED", "/nonexistent")
MLTRAIN = [
    "hydra.launcher.shared_paths=true",
    'hydra.launcher.overrides=["environment.image={image}","environment.python=/opt/app/bin/python",'
    "\"compute.volumes=['{shared}:{shared}:rw','{tests}:{tests}:ro']\"]".format(
        image=os.environ.get("MLTRAIN_TEST_JOB_IMAGE", "missing"), shared=SHARED, tests=HERE.parent),
]

pytestmark = [
    pytest.mark.filterwarnings("ignore:Future Hydra versions will no longer change working directory:UserWarning"),
    # The Docker engine client keeps one idle connection per thread (mltrain.targets.docker.engine) and nothing
    # closes it when a worker thread ends; the launcher's job threads leave theirs to the garbage collector.
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
]


@pytest.mark.parametrize(("launcher_name", "overrides"), [("mltrain_docker", MLTRAIN)])
class TestLauncherSuite(LauncherTestSuite):
    def get_task_function(self) -> Callable[[Any], Any]:
        return return_100  # the suite's own default is a closure

    @pytest.mark.xfail(reason=CLOSURE, strict=True)
    def test_sweep_with_custom_resolver(self, hydra_sweep_runner: Any, launcher_name: str, overrides: list[str],
                                        tmpdir: Any) -> None:
        super().test_sweep_with_custom_resolver(hydra_sweep_runner, launcher_name, overrides, tmpdir)


@pytest.mark.parametrize(("task_launcher_cfg", "extra_flags"),
                         [({}, ["-m", "hydra/launcher=mltrain_docker", *MLTRAIN])])
class TestIntegrationSuite(IntegrationTestSuite):
    pass
