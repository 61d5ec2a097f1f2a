"""The group schemas are derived from the registries (targets, environments, frameworks), not kept by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
from conftest import Project, assert_one_line_error

from mltrain.config.groups import ComputeConfig, EnvironmentConfig, FrameworkConfig
from mltrain.config.schema import GROUP_SCHEMAS, config_from_plain, config_to_plain, schema_files
from mltrain.environments import ENVIRONMENTS
from mltrain.frameworks import FRAMEWORKS
from mltrain.targets import TARGETS
from mltrain.targets.base import Executor
from mltrain.targets.local.executor import LocalExecutor
from mltrain.util.registry import Registry

BASES = {"compute": ComputeConfig, "environment": EnvironmentConfig, "framework": FrameworkConfig}


def test_each_group_is_its_registry() -> None:
    assert GROUP_SCHEMAS == {"compute": TARGETS, "environment": ENVIRONMENTS, "framework": FRAMEWORKS}
    assert TARGETS.kinds() == ("local", "docker", "ssh", "spark", "ray")
    assert ENVIRONMENTS.kinds() == ("user_managed", "venv", "docker")
    assert FRAMEWORKS.kinds() == ("python", "pyspark", "distributed")


@pytest.mark.parametrize("group", sorted(BASES))
def test_every_kind_declares_what_its_registry_line_says(group: str) -> None:
    registry = GROUP_SCHEMAS[group]
    for kind in registry:
        config = registry[kind]
        assert issubclass(config, BASES[group]) and config().type == kind
        impl = registry.impl(kind)  # checks kind and config_class against the line, or raises
        assert impl.kind == kind and impl.config_class is config


def test_config_modules_live_beside_their_code() -> None:
    assert [TARGETS[k].__module__ for k in TARGETS] == [f"mltrain.targets.{k}.config" for k in TARGETS]
    assert ENVIRONMENTS["venv"].__module__ == ENVIRONMENTS.impl("venv").__module__ == "mltrain.environments.venv"
    assert FRAMEWORKS["pyspark"].__module__ == FRAMEWORKS.impl("pyspark").__module__


def test_the_composition_cache_keys_on_every_schema_file() -> None:
    """An edited target config module must recompose, as an edited schema.py always did."""
    files = schema_files()
    for registry in GROUP_SCHEMAS.values():
        for kind in registry:
            assert sys.modules[registry[kind].__module__].__file__ in files
    assert sys.modules["mltrain.config.groups"].__file__ in files


def test_validated_configs_round_trip_through_the_registries() -> None:
    from omegaconf import OmegaConf

    from mltrain.config.schema import validate

    cfg = validate(OmegaConf.create({
        "script": "t.py", "environment": {"type": "venv", "packages": ["x"]},
        "compute": {"type": "docker", "mem_limit": "1g"}, "framework": {"type": "python"},
    }))
    again = config_from_plain(json.loads(json.dumps(config_to_plain(cfg))))
    assert again == cfg and type(again.compute) is TARGETS["docker"] and type(again.environment) is ENVIRONMENTS["venv"]


def test_importing_the_schemas_imports_no_target_code() -> None:
    """`mltrain --help` and a cached submit read the schemas: no executor, SDK, Hydra or OmegaConf comes with them."""
    code = ("import sys, mltrain.config.schema; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('docker', 'paramiko', 'pyspark', 'omegaconf', 'hydra') or m.endswith(('.executor', '.engine'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------- messages
def test_an_unknown_compute_type_lists_the_registry(project: Project) -> None:
    assert_one_line_error(project.run("script=train.py", "compute.type=nowhere"),
                          "compute.type='nowhere' is not known; valid types: docker, local, ray, spark, ssh")


def test_an_unknown_compute_option_lists_the_options(project: Project) -> None:
    assert_one_line_error(project.run("script=train.py", "compute=nowhere"),
                          "unknown compute option 'nowhere' (available: docker, local, ray, spark, ssh)")


@pytest.mark.parametrize(("group", "override", "valid"), [
    ("compute", "+compute.mem_limt=4g", "mem_limit"),
    ("compute", "+compute.hots=box", "host"),
    ("environment", "+environment.pacakges=[x]", "packages"),
    ("framework", "+framework.arg_style=hydra", "args_style"),
])
def test_a_typo_in_an_option_names_the_key(project: Project, group: str, override: str, valid: str) -> None:
    choice = {"+compute.mem_limt=4g": "compute=docker", "+compute.hots=box": "compute=ssh",
              "+environment.pacakges=[x]": "environment=venv"}.get(override, "compute=local")
    key = override.lstrip("+").split("=")[0]
    assert_one_line_error(project.run("script=train.py", choice, override),
                          f"{key}: unknown key for {group} type", "valid keys: ", valid)


def test_a_value_a_type_cannot_hold_names_the_key(project: Project) -> None:
    assert_one_line_error(project.run("script=train.py", "compute.cancel_grace=soon"), "compute.cancel_grace")


# ------------------------------------------------------ the registry itself
def _registry(config: str, impl: str) -> Registry[ComputeConfig, Executor]:
    registry: Registry[ComputeConfig, Executor] = Registry(
        "compute", config_base="mltrain.config.groups:ComputeConfig", impl_base="mltrain.targets.base:Executor")
    registry.add("odd", config=config, impl=impl)
    return registry


@dataclass
class OddCompute(ComputeConfig):
    type: str = "odd"


@dataclass
class MislabeledCompute(ComputeConfig):
    type: str = "even"


class OddExecutor(LocalExecutor):
    kind = "odd"
    config_class = OddCompute


class InheritsItsKind(LocalExecutor):  # declares nothing: it would pass for compute=local
    pass


def test_a_registration_mistake_fails_loudly_when_first_used() -> None:
    here = __name__
    assert _registry(f"{here}:OddCompute", f"{here}:OddExecutor").impl("odd") is OddExecutor
    with pytest.raises(TypeError, match=r"MislabeledCompute\.type defaults to 'even'"):
        _registry(f"{here}:MislabeledCompute", f"{here}:OddExecutor").config_class("odd")
    with pytest.raises(TypeError, match="declares kind=None"):
        _registry(f"{here}:OddCompute", f"{here}:InheritsItsKind").impl("odd")
    with pytest.raises(TypeError, match="not a ComputeConfig dataclass"):
        _registry("mltrain.environments.venv:VenvEnvironment", f"{here}:OddExecutor").config_class("odd")
    with pytest.raises(TypeError, match="does not subclass Executor"):
        _registry(f"{here}:OddCompute", "mltrain.environments.venv:Venv").impl("odd")
    registry = _registry(f"{here}:OddCompute", f"{here}:OddExecutor")
    registry.add("odd", config=f"{here}:OddCompute", impl=f"{here}:OddExecutor")  # the same line twice: fine
    with pytest.raises(ValueError, match="registered already"):
        registry.add("odd", config=f"{here}:OddCompute", impl=f"{here}:InheritsItsKind")

