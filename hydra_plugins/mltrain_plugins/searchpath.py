"""mltrain's launcher presets in every Hydra app's search path; a project's own config ahead of mltrain's.

Every app finds ``hydra/launcher=mltrain_local`` (docker, ssh, ...). For mltrain itself, the project's
config dir (``mltrain.config.cache.project_conf_dir``) overrides mltrain's packaged config.

Hydra 1.3's ``--config-dir`` and ``hydra.searchpath`` can only add options, never
replace a packaged file; a search-path plugin that prepends the project's
directory ahead of ``pkg://mltrain.conf`` can. It acts only when mltrain is the
application composing (other Hydra apps in the same environment are untouched).
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.plugins.search_path_plugin import SearchPathPlugin

from hydra_plugins.mltrain_plugins import CONF as PRESETS
from mltrain.config.cache import project_conf_dir

PACKAGED = "pkg://mltrain.conf"


class MltrainSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(element.path == PRESETS for element in search_path.get_path()):
            search_path.append(provider="mltrain", path=PRESETS)  # hydra/launcher=mltrain_docker, ... in any app
        if not any(element.path == PACKAGED for element in search_path.get_path()):
            return
        directory = project_conf_dir()  # the composition cache keys on the same directory
        if directory is None:
            return
        search_path.prepend(
            provider="mltrain-project", path=f"file://{directory}", anchor=SearchPathQuery(path=PACKAGED)
        )
