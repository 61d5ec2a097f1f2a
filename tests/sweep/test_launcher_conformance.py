"""Hydra discovers mltrain's plugins. Its plugin-author suites run in tests/hydra (suite_local.py, per install mode)."""

from __future__ import annotations

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper

from hydra_plugins.mltrain_plugins.launcher import MltrainLauncher
from hydra_plugins.mltrain_plugins.sweeper import MltrainSweeper
from mltrain.cli.submit import register_plugins
from mltrain.sweep.session import register_resolver

register_plugins()
register_resolver()


# The suite expects Hydra 1.1's job semantics (each job runs in its own output dir), as Hydra's own plugin
# tests do; Hydra warns about that default on every job. mltrain's own trials refuse chdir (see sweep_jobs).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Future Hydra versions will no longer change working directory:UserWarning"
)

def _paths(classes: list[type]) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in classes}


def test_discovered_by_hydra() -> None:
    # By import path, not identity: Hydra's plugin scan re-executes plugin modules when its singletons are reset
    # (hydra_restore_singletons does that in tests/hydra), which makes new class objects of the same classes.
    assert _paths([MltrainLauncher]) <= _paths(Plugins.instance().discover(Launcher))
    assert _paths([MltrainSweeper]) <= _paths(Plugins.instance().discover(Sweeper))
