"""One contract test per private Hydra symbol mltrain relies on (``mltrain.hydra_compat.SYMBOLS``).

Each checks that the symbol is there, is called the way mltrain calls it, and (where cheap) still
does what mltrain relies on. A failure names the symbol and the Hydra version, so upgrading Hydra
is: run this file, fix what it names in ``mltrain/hydra_compat.py``. The last tests check that no
other module reaches Hydra's private parts.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

import mltrain
from mltrain import hydra_compat
from mltrain.config.compose import CONFIG_PATH, prepare_hydra

COVERED: set[str] = set()


def covers(symbol: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a test as the contract for ``symbol`` (which must be in ``hydra_compat.SYMBOLS``)."""
    assert symbol in hydra_compat.SYMBOLS, symbol
    COVERED.add(symbol)

    def mark(test: Callable[..., None]) -> Callable[..., None]:
        return test

    return mark


@contextmanager
def contract(symbol: str) -> Iterator[None]:
    """Any failure inside is a loud one line: which Hydra symbol changed, in which Hydra version."""
    try:
        yield
    except Exception as exc:
        pytest.fail(f"Hydra {hydra_compat.HYDRA_VERSION} changed {symbol}: {type(exc).__name__}: {exc} "
                    "(mltrain.hydra_compat wraps it; adapt it there)", pytrace=False)


def params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


@pytest.fixture(scope="module")
def loader() -> Any:
    prepare_hydra()
    return hydra_compat.config_loader(CONFIG_PATH)


def _composed(loader: Any, overrides: list[str], *, multirun: bool = False) -> DictConfig:
    from hydra.types import RunMode

    cfg: DictConfig = loader.load_configuration(config_name="config", overrides=overrides,
                                                run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)
    return cfg


# ------------------------------------------------------------ the command line
@covers("hydra._internal.utils._run_hydra")
def test_run_hydra(tmp_path: Path) -> None:
    from hydra._internal import utils

    script = textwrap.dedent(f"""
        import json, sys
        from mltrain import hydra_compat
        seen = []
        parser = hydra_compat.args_parser()
        args = parser.parse_args(["+a=1", "hydra.run.dir={tmp_path}", "hydra.output_subdir=null",
                                  "hydra/job_logging=none", "hydra/hydra_logging=none"])
        hydra_compat.run_hydra(args, parser, lambda cfg: seen.append(dict(cfg)), None, None)
        print(json.dumps(seen))
    """)
    with contract("hydra._internal.utils._run_hydra"):
        assert params(utils._run_hydra)[:5] == ["args", "args_parser", "task_function", "config_path", "config_name"]
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[-1]) == [{"a": 1}]


@covers("hydra._internal.utils._run_hydra (its multirun steps)")
def test_plain_multirun_is_run_as_run_hydra_runs_it(tmp_path: Path) -> None:
    """``run_hydra``'s own way through a plain ``-m`` (no ``get_mode`` composition) gives each job what Hydra's
    ``_run_hydra`` gives it: the same config, mode, Hydra overrides, job name and sweep folders."""
    script = textwrap.dedent("""
        import json, os, sys
        from hydra._internal import utils
        from hydra.core.hydra_config import HydraConfig
        from mltrain import hydra_compat
        seen, start = [], os.getcwd()

        def task(cfg):
            hc = HydraConfig.get()
            seen.append([dict(cfg), str(hc.mode), list(hc.overrides.hydra), list(hc.overrides.task), hc.job.name,
                         hc.runtime.output_dir.replace(start, "DIR"), hc.job.num])

        parser = hydra_compat.args_parser()
        args = parser.parse_args(["-m", "+a=1,2", "+b=x", "hydra.sweep.dir=sweep",
                                  "hydra/job_logging=none", "hydra/hydra_logging=none"])
        run = utils._run_hydra if sys.argv[1] == "theirs" else hydra_compat.run_hydra
        run(args, parser, task, None, None)
        print(json.dumps(seen))
    """)
    with contract("hydra._internal.utils._run_hydra (its multirun steps)"):
        seen = {}
        for way in ("theirs", "ours"):
            (tmp_path / way).mkdir()
            done = subprocess.run([sys.executable, "-c", script, way], capture_output=True, text=True, timeout=120,
                                  cwd=tmp_path / way, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
            assert done.returncode == 0, done.stderr
            seen[way] = json.loads(done.stdout.splitlines()[-1])
        assert len(seen["ours"]) == 2
        assert seen["ours"] == seen["theirs"]
        assert seen["ours"][0][1] == "RunMode.MULTIRUN"
        assert (tmp_path / "ours" / "sweep" / "multirun.yaml").read_text().replace(str(tmp_path / "ours"), "DIR") == (
            tmp_path / "theirs" / "sweep" / "multirun.yaml").read_text().replace(str(tmp_path / "theirs"), "DIR")


def test_multirun_with_another_command_takes_hydras_own_way() -> None:
    """``--cfg``, ``--help``, ``-cd`` and the like change what ``_run_hydra`` does: those go through it."""
    parser = hydra_compat.args_parser()
    assert hydra_compat._plain_multirun(parser.parse_args(["-m", "a=1"]))
    for flags in (["--cfg", "job"], ["--info", "all"], ["-cd", "conf"], ["--help"], ["--hydra-help"]):
        assert not hydra_compat._plain_multirun(parser.parse_args(["-m", *flags, "a=1"])), flags
    assert not hydra_compat._plain_multirun(parser.parse_args(["a=1"]))


@covers("hydra._internal.utils.get_args_parser")
def test_get_args_parser() -> None:
    with contract("hydra._internal.utils.get_args_parser"):
        parsed = hydra_compat.args_parser().parse_args(["-m", "--cfg", "job", "-cn", "c", "-cd", "d", "a=1"])
        for name in ("multirun", "cfg", "info", "shell_completion", "hydra_help", "help", "config_name",
                     "config_dir", "overrides"):
            assert hasattr(parsed, name), f"no {name} in the parsed arguments"
        assert (parsed.multirun, parsed.cfg, parsed.config_name, parsed.config_dir, parsed.overrides) == (
            True, "job", "c", "d", ["a=1"])


# --------------------------------------------------------------- composition
@covers("hydra._internal.utils.create_automatic_config_search_path")
def test_create_automatic_config_search_path() -> None:
    from hydra._internal.utils import create_automatic_config_search_path

    prepare_hydra()
    with contract("hydra._internal.utils.create_automatic_config_search_path"):
        assert params(create_automatic_config_search_path) == ["calling_file", "calling_module", "config_path"]
        path = create_automatic_config_search_path(None, None, CONFIG_PATH)
        assert CONFIG_PATH in [element.path for element in path.get_path()]


@covers("hydra._internal.config_loader_impl.ConfigLoaderImpl")
def test_config_loader_impl(loader: Any) -> None:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    with contract("hydra._internal.config_loader_impl.ConfigLoaderImpl"):
        assert "config_search_path" in params(ConfigLoaderImpl)
        cfg = _composed(loader, ["script=train.py", "params.lr=0.1"])
        assert (cfg.script, cfg.params.lr, "hydra" in cfg) == ("train.py", 0.1, True)
        assert "local" in loader.get_group_options("compute")


@covers("hydra._internal.config_loader_impl.ConfigLoaderImpl._parse_overrides_and_create_caching_repo")
def test_parse_overrides_and_create_caching_repo(loader: Any) -> None:
    with contract("ConfigLoaderImpl._parse_overrides_and_create_caching_repo"):
        repo = hydra_compat.caching_repository(loader, "config", [])
        assert repo.group_exists("compute") and repo.group_exists("hydra/launcher")
        assert not repo.group_exists("params")


@covers("hydra._internal.config_loader_impl.ConfigLoaderImpl._apply_overrides_to_config")
def test_apply_overrides_to_config() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with contract("ConfigLoaderImpl._apply_overrides_to_config"):
        cfg = OmegaConf.create({"a": {"b": 1}, "d": 1})
        parsed = OverridesParser.create().parse_overrides(["a.b=2", "+c=3", "~d"])
        hydra_compat.apply_value_overrides(parsed, cfg)
        assert OmegaConf.to_container(cfg) == {"a": {"b": 2}, "c": 3}


@covers("hydra._internal.config_loader_impl.get_overrides_dirname")
def test_get_overrides_dirname() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with contract("hydra._internal.config_loader_impl.get_overrides_dirname"):
        parsed = OverridesParser.create().parse_overrides(["b=2", "a=1", "c=3"])
        assert hydra_compat.overrides_dirname(parsed, kv_sep="=", item_sep=",", exclude_keys=["c"]) == "a=1,b=2"


@covers("hydra._internal.core_plugins.file_config_source.FileConfigSource")
def test_file_config_source(tmp_path: Path) -> None:
    with contract("hydra._internal.core_plugins.file_config_source.FileConfigSource"):
        (tmp_path / "config.yaml").write_text("a: 1\n")
        source = hydra_compat.FileConfigSource(provider="test", path=f"file://{tmp_path}")
        assert hydra_compat.FileConfigSource.scheme() == "file" and source.path == str(tmp_path)
        assert OmegaConf.to_container(source.load_config("config").config) == {"a": 1}


@covers("hydra._internal.core_plugins.importlib_resources_config_source.ImportlibResourcesConfigSource")
def test_importlib_resources_config_source() -> None:
    with contract("ImportlibResourcesConfigSource"):
        source = hydra_compat.ImportlibResourcesConfigSource(provider="test", path=CONFIG_PATH)
        assert hydra_compat.ImportlibResourcesConfigSource.scheme() == "pkg" and source.path == "mltrain.conf"
        assert "type" in source.load_config("compute/local").config


@covers("hydra.plugins.config_source.ConfigSource._normalize_file_name")
def test_normalize_file_name(tmp_path: Path) -> None:
    with contract("ConfigSource._normalize_file_name"):
        source = hydra_compat.FileConfigSource(provider="test", path=f"file://{tmp_path}")
        assert hydra_compat.config_file_name(source, "compute/local") == "compute/local.yaml"
        assert hydra_compat.config_file_name(source, "config.yaml") == "config.yaml"


@covers("hydra._internal.sources_registry.SourcesRegistry.types")
def test_sources_registry_types() -> None:
    from hydra._internal.sources_registry import SourcesRegistry

    from mltrain.config.bounds import FileConfigSource, ImportlibResourcesConfigSource

    with contract("hydra._internal.sources_registry.SourcesRegistry.types"):
        registry = SourcesRegistry.instance()
        assert isinstance(registry.types, dict)
        for checked in (FileConfigSource, ImportlibResourcesConfigSource):
            hydra_compat.replace_config_source(checked)
            assert registry.resolve(checked.scheme()) is checked


# --------------------------------------------------------------------- jobs
@covers("hydra.core.hydra_config.HydraConfig.cfg")
def test_hydra_config_cfg(loader: Any) -> None:
    from hydra.core.hydra_config import HydraConfig

    with contract("hydra.core.hydra_config.HydraConfig.cfg"):
        before = HydraConfig.instance().cfg
        cfg = _composed(loader, ["script=x.py", "hydra.job.name=contract"])
        with hydra_compat.hydra_config_set(cfg):
            assert HydraConfig.get().job.name == "contract"
            with hydra_compat.hydra_config_set(None):
                assert HydraConfig.get().job.name == "contract"
        assert HydraConfig.instance().cfg is before


@covers("hydra.core.utils.JobReturn._return_value")
def test_job_return_value() -> None:
    from hydra.core.utils import JobReturn, JobStatus

    with contract("hydra.core.utils.JobReturn._return_value"):
        ret = JobReturn()
        error = ValueError("the job's own error")
        ret.return_value = error
        ret.status = JobStatus.FAILED
        assert hydra_compat.job_value(ret) is error  # not raised, not printed
        ret.return_value, ret.status = 42, JobStatus.COMPLETED
        assert hydra_compat.job_value(ret) == ret.return_value == 42


@covers("hydra.core.utils._save_config")
def test_save_config(tmp_path: Path) -> None:
    with contract("hydra.core.utils._save_config"):
        hydra_compat.save_config(OmegaConf.create({"a": 1}), "config.yaml", tmp_path / ".hydra")
        assert (tmp_path / ".hydra" / "config.yaml").read_text() == "a: 1\n"


@covers("hydra.core.utils._flush_loggers")
def test_flush_loggers() -> None:
    from hydra.core import utils

    with contract("hydra.core.utils._flush_loggers"):
        assert params(utils._flush_loggers) == []
        hydra_compat.flush_loggers()


class _Recorded:
    """A stand-in for Hydra's callbacks: what ``run_job`` (or our bookkeeping) told them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def on_job_start(self, **kwargs: Any) -> None:
        self.calls.append(("on_job_start", sorted(kwargs)))

    def on_job_end(self, **kwargs: Any) -> None:
        self.calls.append(("on_job_end", sorted(kwargs)))


@covers("hydra.core.utils.run_job (its bookkeeping)")
def test_run_job_bookkeeping_matches_run_job(loader: Any, tmp_path: Path) -> None:
    """``job_bookkeeping`` + ``job_ended`` leave what ``run_job`` leaves: the same files, fields and callbacks."""
    from hydra.core.utils import JobStatus, run_job
    from omegaconf import open_dict, read_write

    def job(num: int) -> tuple[DictConfig, DictConfig]:
        cfg = _composed(loader, ["script=x.py", "params.lr=0.5", f"hydra.sweep.dir={tmp_path}",
                                 "hydra.output_subdir=.hydra", "+hydra.job.env_set.CONTRACT=1"], multirun=True)
        with read_write(cfg.hydra), open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = num
            cfg.hydra.overrides.task = ["params.lr=0.5"]
        return cfg, OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])

    with contract("hydra.core.utils.run_job"):
        assert params(run_job)[:5] == ["task_function", "config", "job_dir_key", "job_subdir_key", "hydra_context"]
        theirs_cb, ours_cb = _Recorded(), _Recorded()
        env_seen: list[str | None] = []

        def task(cfg: DictConfig) -> str:
            env_seen.append(os.environ.get("CONTRACT"))
            return "done"

        config, _ = job(0)
        theirs = run_job(task_function=task, config=config, job_dir_key="hydra.sweep.dir",
                         job_subdir_key="hydra.sweep.subdir", hydra_context=SimpleNamespace(callbacks=theirs_cb))
        config, job_cfg = job(1)
        context = SimpleNamespace(callbacks=ours_cb)
        ours = hydra_compat.job_bookkeeping(context, config, job_cfg, "pending", task)
        assert hydra_compat.job_value(ours) == "pending" and ours.status == JobStatus.COMPLETED
        env_seen.append(os.environ.get("CONTRACT"))  # ours runs the body later, outside env_set
        ours.return_value = task(job_cfg)
        hydra_compat.job_ended(context, config, ours)

        assert env_seen[0] == "1"
        for name in ("overrides", "working_dir", "task_name", "status"):
            assert getattr(ours, name) == getattr(theirs, name), name
        assert ours.return_value == theirs.return_value
        assert OmegaConf.to_container(ours.cfg) == OmegaConf.to_container(theirs.cfg)
        assert Path(ours.hydra_cfg.hydra.runtime.output_dir) == tmp_path / "1"
        assert Path(theirs.hydra_cfg.hydra.runtime.output_dir) == tmp_path / "0"
        for name in ("config.yaml", "overrides.yaml"):
            assert (tmp_path / "1" / ".hydra" / name).read_text() == (tmp_path / "0" / ".hydra" / name).read_text()
        hydra_yaml = [(tmp_path / n / ".hydra" / "hydra.yaml").read_text().replace(f"/{n}\n", "/N\n").replace(
            f"num: {n}", "num: N").replace(f"id: '{n}'", "id: N").replace(f"id: {n}", "id: N") for n in "01"]
        assert hydra_yaml[0] == hydra_yaml[1]
        assert ours_cb.calls == theirs_cb.calls == [("on_job_start", ["config", "task_function"]),
                                                    ("on_job_end", ["config", "job_return"])]


@covers("hydra._internal.callbacks.Callbacks.on_job_start/on_job_end")
def test_callbacks(loader: Any) -> None:
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import JobReturn, JobStatus

    with contract("hydra._internal.callbacks.Callbacks.on_job_start/on_job_end"):
        assert {"config", "task_function"} <= set(params(Callbacks.on_job_start))
        assert {"config", "job_return"} <= set(params(Callbacks.on_job_end))
        cfg = _composed(loader, ["script=x.py"], multirun=True)
        context = SimpleNamespace(callbacks=Callbacks(cfg))
        ret = JobReturn(status=JobStatus.COMPLETED)
        context.callbacks.on_job_start(config=cfg, task_function=print)
        hydra_compat.job_ended(context, cfg, ret)


@covers("hydra.core.plugins.Plugins.instantiate_sweeper/instantiate_launcher (frame names)")
@pytest.mark.parametrize("kind", ["sweeper", "launcher"])
def test_plugin_being_set_up(kind: str) -> None:
    from hydra.core.plugins import Plugins

    with contract("Plugins.instantiate_sweeper/instantiate_launcher"):
        cfg = OmegaConf.create({"hydra": {kind: {"_target_": "hydra_plugins.no_such_module.NoSuchPlugin"}}})
        instantiate = getattr(Plugins.instance(), f"instantiate_{kind}")
        with pytest.raises(Exception) as raised:
            instantiate(hydra_context=None, task_function=print, config=cfg)
        assert hydra_compat.plugin_being_set_up(raised.value) == kind
    assert hydra_compat.plugin_being_set_up(ValueError("elsewhere")) is None


# ------------------------------------------------------------------ the rules
def test_every_symbol_has_a_contract() -> None:
    assert set(hydra_compat.SYMBOLS) == COVERED


def test_a_broken_contract_names_the_symbol_and_the_hydra_version() -> None:
    with pytest.raises(pytest.fail.Exception) as failed, contract("hydra.core.utils.JobReturn._return_value"):
        raise AttributeError("'JobReturn' object has no attribute '_return_value'")
    message = str(failed.value)
    assert "JobReturn._return_value" in message and f"Hydra {hydra_compat.HYDRA_VERSION}" in message


ROOT = Path(mltrain.__file__).parent
PRIVATE_NAMES = {symbol.split(" ")[0].split("/")[0].rsplit(".", 1)[-1] for symbol in hydra_compat.SYMBOLS
                 if symbol.split(" ")[0].rsplit(".", 1)[-1].startswith("_")}


def _private_uses(path: Path) -> list[str]:
    """Where ``path`` reaches Hydra's private parts without ``mltrain.hydra_compat``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.relative_to(ROOT.parent)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hydra"):
            if (node.module or "").startswith("hydra._internal") or any(a.name.startswith("_") for a in node.names):
                found.append(f"{where} from {node.module} import ...")
        elif isinstance(node, ast.Import) and any(a.name.startswith("hydra._internal") for a in node.names):
            found.append(f"{where} import hydra._internal...")
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
            found.append(f"{where} .{node.attr}")
        elif isinstance(node, ast.Attribute) and node.attr == "cfg" and "HydraConfig" in ast.unparse(node.value):
            found.append(f"{where} HydraConfig...cfg")
    return found


def test_nothing_else_touches_hydras_private_symbols() -> None:
    files = [p for p in ROOT.rglob("*.py") if p.name != "hydra_compat.py"]
    files += list((ROOT.parent / "hydra_plugins" / "mltrain_plugins").glob("*.py"))
    found = [use for path in files for use in _private_uses(path)]
    assert not found, "use mltrain.hydra_compat for these:\n" + "\n".join(found)


def test_sweep_dirs_join_each_jobs_folder_as_omegaconf_resolves_it(loader: Any, tmp_path: Path) -> None:
    """``SweepDirs`` gives what resolving ``hydra.sweep.dir``/``subdir`` through OmegaConf gives, job after job,
    for the values it joins itself and for those it leaves to OmegaConf."""
    from omegaconf import open_dict, read_write

    from mltrain.sweep import session

    forms = [  # (dir, subdir, whether SweepDirs joins the subdir itself)
        ("${mltrain_sweep_dir:}", "${hydra.job.num}", True),
        (str(tmp_path / "plain"), "n${hydra.job.num}-i${hydra.job.id}_${hydra.job.override_dirname}_", True),
        ("${mltrain_sweep_dir:}/x", "${ hydra.job.num }", True),
        ("${hydra.job.num}", "${hydra.job.override_dirname}", True),
        (str(tmp_path), "${params.lr}_${hydra.job.num}", False),  # another node
        (str(tmp_path), "${oc.env:HOME}/${hydra.job.num}", False),  # another resolver
        (str(tmp_path), "${mltrain_sweep_dir:}${hydra.job.num}", False),  # both kinds
        (str(tmp_path), "a\\${hydra.job.num}", False),  # an escape
    ]
    session.begin(session.SweepSession(sweep_dir=str(tmp_path / "sweep")))
    try:
        for sweep_dir, subdir, joined in forms:
            dirs = hydra_compat.SweepDirs()
            for num, lr in ((0, "0.5"), (1, "0.25"), (7, "0.5")):
                cfg = _composed(loader, ["script=x.py", f"params.lr={lr}"], multirun=True)
                with read_write(cfg.hydra), open_dict(cfg):
                    cfg.hydra.sweep.dir, cfg.hydra.sweep.subdir = sweep_dir, subdir
                    cfg.hydra.job.id = cfg.hydra.job.num = num
                    cfg.hydra.job.override_dirname = f"params.lr={lr}"
                job = {"id": num, "num": num, "override_dirname": f"params.lr={lr}"}
                expected = os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                                        str(OmegaConf.select(cfg, "hydra.sweep.subdir")))
                assert dirs.output_dir(cfg, job) == expected, (sweep_dir, subdir, num)
            assert (dirs._plans[subdir] is not None) is joined, subdir
        cfg = _composed(loader, ["script=x.py"], multirun=True)  # the default: the sweep's folder / the job's number
        assert hydra_compat.SweepDirs().output_dir(cfg, {"id": 3, "num": 3, "override_dirname": ""}) == str(
            tmp_path / "sweep" / "3")
    finally:
        session.end()
