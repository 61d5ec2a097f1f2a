"""mltrain's Hydra plugins: a search-path plugin, a launcher and a sweeper.

Hydra accepts plugin classes only under ``hydra_plugins``; each module here is a
thin class that hands the work to ``mltrain.sweep`` (imported when a sweep
starts). This package's own ``__init__`` imports nothing of mltrain, so mltrain
can make the config options known (``store_configs``) without importing the
plugins, which import mltrain's sweep code in turn.
"""

from __future__ import annotations

from typing import Any

LAUNCHER = "hydra_plugins.mltrain_plugins.launcher.MltrainLauncher"
SWEEPER = "hydra_plugins.mltrain_plugins.sweeper.MltrainSweeper"
CONF = "pkg://hydra_plugins.mltrain_plugins.conf"  # the presets: hydra/launcher=mltrain_local, mltrain_docker, ...

# ``hydra/launcher=mltrain``'s settings. They matter for a Hydra app's own jobs (each one an mltrain run);
# ``mltrain -m`` takes its target from mltrain's own config (compute=..., environment=...) instead.
LAUNCHER_NODE: dict[str, Any] = {
    "_target_": LAUNCHER,
    "compute": None,  # mltrain's compute option for each job: local (null), docker, ssh, ...
    "environment": None,  # mltrain's environment option; null: user_managed (the Python running the app)
    "max_concurrent": None,  # jobs at once; null: the target's default (the CPU count on local, 4 elsewhere)
    "overrides": [],  # more of mltrain's settings, as on its command line: ["compute.image=...", ...]
    "shared_paths": None,  # does the job see this machine's paths? null: the target says (local: yes); true:
    # e.g. docker with compute.volumes mounting the sweep dir at the same path -- jobs then write it in place
}


# ``hydra/sweeper=mltrain``'s settings for a Hydra app's sweep (null: mltrain's default, as for ``sweep.*``);
# ``mltrain -m`` takes them from mltrain's own ``sweep.*`` instead. The objective is the task's return value.
SWEEPER_NODE: dict[str, Any] = {
    "_target_": SWEEPER,
    "sampler": None,  # grid | random | tpe
    "n_trials": None,
    "max_trials": None,
    "goal": None,  # min | max: what the return values are for
    "seed": None,
    "max_concurrent": None,  # jobs per batch; null: the launcher's concurrency
}


def store_configs() -> None:
    """The options ``hydra/launcher=mltrain`` and ``hydra/sweeper=mltrain`` (idempotent).

    Stored when Hydra imports the plugin modules (any Hydra app in this environment may pick
    them), and by mltrain before it composes: setuptools' editable installs hide this package
    from Hydra's plugin scan.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="hydra/launcher", name="mltrain", provider="mltrain", node=LAUNCHER_NODE)
    store.store(group="hydra/sweeper", name="mltrain", provider="mltrain", node=SWEEPER_NODE)
