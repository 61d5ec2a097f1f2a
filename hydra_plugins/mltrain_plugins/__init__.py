"""mltrain's Hydra plugins: a search-path plugin, a launcher and a sweeper.

Hydra accepts plugin classes only under ``hydra_plugins``; each module here is a
thin class that hands the work to ``mltrain.sweep`` (imported when a sweep
starts). This package's own ``__init__`` imports nothing of mltrain, so mltrain
can make the config options known (``store_configs``) without importing the
plugins, which import mltrain's sweep code in turn.
"""

from __future__ import annotations

LAUNCHER = "hydra_plugins.mltrain_plugins.launcher.MltrainLauncher"
SWEEPER = "hydra_plugins.mltrain_plugins.sweeper.MltrainSweeper"


def store_configs() -> None:
    """The options ``hydra/launcher=mltrain`` and ``hydra/sweeper=mltrain`` (idempotent).

    Stored when Hydra imports the plugin modules (any Hydra app in this environment may pick
    them), and by mltrain before it composes: setuptools' editable installs hide this package
    from Hydra's plugin scan.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="hydra/launcher", name="mltrain", provider="mltrain", node={"_target_": LAUNCHER})
    store.store(group="hydra/sweeper", name="mltrain", provider="mltrain", node={"_target_": SWEEPER})
