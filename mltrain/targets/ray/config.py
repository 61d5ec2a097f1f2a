"""``compute=ray``'s settings (``conf/compute/ray.yaml``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from mltrain.config.groups import ComputeConfig

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
OURS = ("working_dir", "py_modules")  # runtime_env keys mltrain sets itself (the snapshot)
TAKEN = ("pip", "uv", "conda")  # made from environment=...: set them there


@dataclass
class RayCompute(ComputeConfig):
    """A Ray cluster's dashboard (Jobs API): the job runs on a node Ray picks, from the snapshot as working_dir."""

    type: str = "ray"
    address: str | None = None  # the dashboard's URL; default: $RAY_ADDRESS, else http://127.0.0.1:8265
    runtime_env: dict[str, Any] = field(default_factory=dict)  # extra runtime_env keys (env_vars, ...)
    timeout: float = 10.0  # seconds for each request to the cluster before it counts as unreachable
    placement_timeout: float = 300.0  # seconds a multi-node job waits for its placement group, then fails

    def check(self) -> None:
        from mltrain.errors import ConfigError

        if not self.timeout > 0:
            raise ConfigError(f"compute.timeout={self.timeout}: must be a positive number of seconds")
        if not self.placement_timeout > 0:
            raise ConfigError(f"compute.placement_timeout={self.placement_timeout}: must be a positive number of "
                              "seconds")
        for key in self.runtime_env:
            if key in OURS:
                raise ConfigError(f"compute.runtime_env.{key}: mltrain sends the snapshot as the job's {key}; "
                                  "remove it (the code comes from source_dir)")
            if key in TAKEN:
                raise ConfigError(f"compute.runtime_env.{key}: packages come from the environment; use "
                                  "environment=venv environment.packages=[...] instead")
        env_vars = self.runtime_env.get("env_vars", {})
        if not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values()):
            raise ConfigError("compute.runtime_env.env_vars: must map names to strings, e.g. "
                              "'+compute.runtime_env.env_vars={A: \"1\"}'")
        self.url()

    def url(self) -> str:
        """The dashboard's base URL: the setting, else ``$RAY_ADDRESS``, else the local default."""
        from mltrain.errors import ConfigError

        address = (self.address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS).strip().rstrip("/")
        if address.startswith("ray://"):
            raise ConfigError(f"compute.address={address}: mltrain uses Ray's Jobs API, the dashboard's address "
                              "(e.g. http://HEAD:8265), not a Ray Client ray:// address")
        if "://" not in address:
            address = f"http://{address}"
        if not address.startswith(("http://", "https://")):
            raise ConfigError(f"compute.address={address}: use the dashboard's http(s) URL, e.g. {DEFAULT_ADDRESS}")
        return address
