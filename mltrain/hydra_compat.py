"""The one module that touches Hydra's private symbols; everything else in mltrain uses Hydra's public API.

mltrain leans on a few things Hydra 1.3 does not promise to keep: running
Hydra's command line with a task of our own (``_run_hydra``), composing with
a loader of our own, applying value overrides to a composed config, the steps
of ``run_job`` (done in the main thread while the job body runs elsewhere),
the config sources Hydra reads files through, and ``JobReturn``'s raw value.
Each is wrapped here once, named in :data:`SYMBOLS`, and checked by one
contract test in ``tests/test_hydra_compat.py`` that names the symbol and the
Hydra version when a release changes it. Upgrading Hydra means running that
file, and fixing what it names here, nowhere else.

Importing this module imports Hydra (~130 ms); import it only on paths that
compose or run a config.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra._internal import utils as _hydra_utils
from hydra._internal.config_loader_impl import ConfigLoaderImpl as _ConfigLoaderImpl
from hydra._internal.config_loader_impl import get_overrides_dirname as _get_overrides_dirname
from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra._internal.core_plugins.importlib_resources_config_source import ImportlibResourcesConfigSource
from hydra._internal.sources_registry import SourcesRegistry as _SourcesRegistry
from hydra.core import utils as _core_utils
from hydra.core.config_loader import ConfigLoader
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

if TYPE_CHECKING:
    from mltrain.sweep.compose import JobTask

HYDRA_VERSION: str = hydra.__version__

SYMBOLS: tuple[str, ...] = (
    "hydra._internal.utils._run_hydra",
    "hydra._internal.utils._run_hydra (its multirun steps)",
    "hydra._internal.utils.get_args_parser",
    "hydra._internal.utils.create_automatic_config_search_path",
    "hydra._internal.config_loader_impl.ConfigLoaderImpl",
    "hydra._internal.config_loader_impl.ConfigLoaderImpl._parse_overrides_and_create_caching_repo",
    "hydra._internal.config_loader_impl.ConfigLoaderImpl._apply_overrides_to_config",
    "hydra._internal.config_loader_impl.get_overrides_dirname",
    "hydra._internal.core_plugins.file_config_source.FileConfigSource",
    "hydra._internal.core_plugins.importlib_resources_config_source.ImportlibResourcesConfigSource",
    "hydra.plugins.config_source.ConfigSource._normalize_file_name",
    "hydra._internal.sources_registry.SourcesRegistry.types",
    "hydra.core.hydra_config.HydraConfig.cfg",
    "hydra.core.utils.JobReturn._return_value",
    "hydra.core.utils._save_config",
    "hydra.core.utils._flush_loggers",
    "hydra.core.utils.run_job (its bookkeeping)",
    "hydra._internal.callbacks.Callbacks.on_job_start/on_job_end",
    "hydra.core.plugins.Plugins.instantiate_sweeper/instantiate_launcher (frame names)",
)
"""Every private Hydra symbol mltrain relies on; each has one contract test."""

__all__ = [
    "HYDRA_VERSION",
    "SYMBOLS",
    "FileConfigSource",
    "ImportlibResourcesConfigSource",
    "apply_value_overrides",
    "args_parser",
    "caching_repository",
    "config_file_name",
    "config_loader",
    "flush_loggers",
    "hydra_config_copy",
    "hydra_config_set",
    "job_bookkeeping",
    "job_ended",
    "job_number",
    "job_value",
    "overrides_dirname",
    "plugin_being_set_up",
    "replace_config_source",
    "run_hydra",
    "save_config",
]


# ------------------------------------------------------------ the command line
def args_parser() -> argparse.ArgumentParser:
    """Hydra's own command-line parser (``-m``, ``--cfg``, ``--info``, completion, ...), to add flags to."""
    return _hydra_utils.get_args_parser()


def run_hydra(args: argparse.Namespace, parser: argparse.ArgumentParser, task_function: Callable[..., Any],
              config_path: str | None, config_name: str | None) -> None:
    """What ``@hydra.main`` does with parsed arguments, for a task function mltrain builds (not a decorated one)."""
    calling = _hydra_utils.detect_calling_file_or_module_from_task_function(task_function)
    if _plain_multirun(args) and calling != (None, None):  # else Hydra looks for it up the stack: let it
        _multirun(args, task_function, calling, config_path, config_name)
        return
    _hydra_utils._run_hydra(args=args, args_parser=parser, task_function=task_function, config_path=config_path,
                            config_name=config_name)


_OTHER_COMMANDS = ("run", "cfg", "info", "shell_completion", "help", "hydra_help", "resolve", "config_dir")


def _plain_multirun(args: argparse.Namespace) -> bool:
    """``-m`` and nothing that makes ``_run_hydra`` do something else first (help, ``--cfg``, ``-cd``...)."""
    return bool(args.multirun) and not any(getattr(args, name, None) for name in _OTHER_COMMANDS)


def _multirun(args: argparse.Namespace, task_function: Callable[..., Any], calling: tuple[str | None, str | None],
              config_path: str | None, config_name: str | None) -> None:
    """``_run_hydra`` for a plain ``-m``, less its first composition of the whole config.

    Hydra composes the config once only to read ``hydra.mode`` (``Hydra.get_mode``), and then again to run.
    Under ``-m`` the answer changes nothing: unless the config already says MULTIRUN, Hydra adds the override
    ``hydra.mode=MULTIRUN`` (with a warning where it said RUN), and so do we, without asking. That first
    composition is ~0.15 s of every sweep's start, before any trial may begin.
    """
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra

    config_name = args.config_name if args.config_name is not None else config_name
    config_path = args.config_path if args.config_path is not None else config_path
    calling_file, calling_module = calling
    task_name = _hydra_utils.detect_task_name(calling_file, calling_module)
    _core_utils.validate_config_path(config_path)
    search_path = _hydra_utils.create_automatic_config_search_path(calling_file, calling_module, config_path)
    runner = _hydra_utils.run_and_report(lambda: Hydra.create_main_hydra2(task_name=task_name,
                                                                          config_search_path=search_path))
    overrides = list(args.overrides)
    if "hydra.mode=MULTIRUN" not in overrides:
        overrides.append("hydra.mode=MULTIRUN")
    try:
        _hydra_utils.run_and_report(lambda: runner.multirun(config_name=config_name, task_function=task_function,
                                                            overrides=overrides))
    finally:
        GlobalHydra.instance().clear()


def plugin_being_set_up(exc: BaseException) -> str | None:
    """``"sweeper"`` or ``"launcher"`` when ``exc`` was raised while Hydra instantiated that plugin, else None.

    Hydra reports a plugin it cannot use as a bare error; which one it was setting up shows only
    in the traceback, as its ``Plugins.instantiate_sweeper`` / ``instantiate_launcher`` frames (the
    innermost wins: a sweeper sets up its launcher inside its own setup).
    """
    import traceback

    names = [frame.f_code.co_name for frame, _ in traceback.walk_tb(exc.__traceback__)]
    found = [name.removeprefix("instantiate_") for name in names
             if name in ("instantiate_sweeper", "instantiate_launcher")]
    return found[-1] if found else None


# --------------------------------------------------------------- composition
def config_loader(config_path: str) -> ConfigLoader:
    """A config loader of our own for ``config_path`` (``pkg://...``), with the search-path plugins applied.

    Not ``Hydra.create_main_hydra2``: that sets a process-wide singleton, and mltrain composes many
    times in one process (the Python API, also inside a running sweep).
    """
    search_path = _hydra_utils.create_automatic_config_search_path(None, None, config_path)
    return _ConfigLoaderImpl(config_search_path=search_path)


def caching_repository(loader: ConfigLoader, config_name: str | None, hydra_overrides: list[str]) -> Any:
    """The config repository as Hydra builds it for a job (``hydra.searchpath`` overrides applied).

    Its ``group_exists(name)`` tells a config-group override from a value override as Hydra does.
    """
    _, repo = loader._parse_overrides_and_create_caching_repo(  # type: ignore[attr-defined]
        config_name, hydra_overrides)
    return repo


def apply_value_overrides(overrides: Sequence[Any], cfg: DictConfig) -> None:
    """Apply parsed *value* overrides (``key=value``, ``+key``, ``~key``) to a composed config, as Hydra does
    after composing the defaults list."""
    _ConfigLoaderImpl._apply_overrides_to_config(list(overrides), cfg)


def overrides_dirname(overrides: Sequence[Any], *, kv_sep: str, item_sep: str, exclude_keys: Sequence[str]) -> str:
    """``hydra.job.override_dirname`` for parsed task overrides."""
    return str(_get_overrides_dirname(overrides=list(overrides), kv_sep=kv_sep, item_sep=item_sep,
                                      exclude_keys=list(exclude_keys)))


def config_file_name(source: Any, config_path: str) -> str:
    """The file a config source reads for ``config_path`` (``compute/local`` -> ``compute/local.yaml``)."""
    return str(source._normalize_file_name(config_path))


def replace_config_source(source_class: type) -> None:
    """Make Hydra read its scheme (``file``, ``pkg``) through ``source_class`` from now on.

    ``SourcesRegistry.register`` keeps the first class per scheme, so the entry is replaced directly.
    """
    _SourcesRegistry.instance().types[source_class.scheme()] = source_class  # type: ignore[attr-defined]


# --------------------------------------------------------------------- jobs
@contextlib.contextmanager
def hydra_config_set(config: DictConfig | None, *, adopt: bool = False) -> Iterator[None]:
    """``HydraConfig`` holds ``config`` (``None``: as it was) inside the block, and what it held before after it.

    ``set_config`` refuses None, and Hydra's own ``run_job`` restores the raw attribute: so do we.
    ``adopt``: see :func:`set_hydra_config`.
    """
    saved = HydraConfig.instance().cfg
    try:
        if config is not None:
            set_hydra_config(config, adopt=adopt)
        yield
    finally:
        HydraConfig.instance().cfg = saved


def set_hydra_config(cfg: DictConfig, *, adopt: bool = False) -> None:
    """``HydraConfig.instance().set_config(cfg)``, at a third of its cost: the same ``{"hydra": <copy of
    cfg.hydra>}`` with the copy read-only and parented to ``cfg``, but copied by pickling the node (C code)
    instead of OmegaConf's deepcopy (Python, node by node) -- per trial the biggest cost of a sweep's
    bookkeeping. ``tests/test_hydra_compat.py`` checks that both make the same tree.

    ``adopt``: HydraConfig holds ``cfg.hydra`` itself, read-only, with no copy: for a caller that keeps
    the node unchanged while HydraConfig holds it, and keeps no reference to what HydraConfig held.
    """
    from hydra.conf import HydraConf

    if cfg.hydra._get_node_flag("readonly") is not True:  # (setting it walks the whole hydra subtree)
        OmegaConf.set_readonly(cfg.hydra, True)
    hydra_node_type = OmegaConf.get_type(cfg, "hydra")
    assert hydra_node_type is not None and issubclass(hydra_node_type, HydraConf)
    node = cfg._get_node("hydra")
    assert isinstance(node, DictConfig)
    copied = node if adopt else copy_node(node)
    root = DictConfig({}, flags={"no_deepcopy_set_nodes": True})  # take the copy as it is: no second copy
    root["hydra"] = copied
    root._set_flag("no_deepcopy_set_nodes", None)
    copied._set_parent(cfg)
    HydraConfig.instance().cfg = root  # type: ignore[assignment]


def pickled_node(node: DictConfig) -> bytes:
    """``node`` alone (not the config above it), pickled: :func:`unpickled_node` makes deep copies of it."""
    import pickle

    parent = node.__dict__["_parent"]
    node.__dict__["_parent"] = None  # pickled alone, not with the whole config above it
    try:
        return pickle.dumps(node, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        node.__dict__["_parent"] = parent


def unpickled_node(data: bytes) -> DictConfig:
    """A fresh copy of the node :func:`pickled_node` pickled, without a parent (bytes this process made)."""
    import pickle

    copied: DictConfig = pickle.loads(data)
    return copied


def copy_node(node: DictConfig) -> DictConfig:
    """What ``copy.deepcopy(node)`` makes, by pickling (C code) rather than OmegaConf's node-by-node deepcopy."""
    return unpickled_node(pickled_node(node))


def hydra_config_copy() -> Any:
    """A copy of what ``HydraConfig`` holds (``{"hydra": ...}``), as ``run_job`` stores in ``JobReturn.hydra_cfg``."""
    import copy

    return copy.deepcopy(HydraConfig.instance().cfg)


def job_value(job_return: Any) -> Any:
    """A ``JobReturn``'s value or error as stored; ``return_value`` would re-raise an error and print a line."""
    return job_return._return_value


def save_config(cfg: Any, filename: str, output_dir: Path) -> None:
    """One of ``.hydra/``'s files, as ``run_job`` writes it."""
    _core_utils._save_config(cfg, filename, output_dir)


def flush_loggers() -> None:
    _core_utils._flush_loggers()


class SweepDirs:
    """A sweep's ``hydra.sweep.dir``/``subdir`` joined for each job, without OmegaConf resolving them each time.

    Resolving the two interpolations through OmegaConf was a seventh of a sweep's per-trial bookkeeping.
    A value that is plain text and ``${mltrain_sweep_dir:}`` (the running sweep's folder: the same for every
    job) is resolved once per sweep; one that is plain text and the job's own ``${hydra.job.num}``,
    ``${hydra.job.id}``, ``${hydra.job.override_dirname}`` is put together from the job's fields as OmegaConf
    would (``str()`` of each). Anything else (another node, another resolver, an escape, both kinds in one
    value) is resolved by OmegaConf, per job, as before.
    """

    _PART = re.compile(r"\$\{([^${}\\]*)\}")
    _JOB_KEYS = {"hydra.job.num": "num", "hydra.job.id": "id", "hydra.job.override_dirname": "override_dirname"}
    _SWEEP_CONSTANT = frozenset({"mltrain_sweep_dir:"})
    _ONCE = "once"

    def __init__(self) -> None:
        self._plans: dict[str, list[str | tuple[str]] | str | None] = {}
        self._resolved: dict[tuple[str, str], str] = {}

    def output_dir(self, config: DictConfig, job: dict[str, Any]) -> str:
        """``os.path.join(hydra.sweep.dir, hydra.sweep.subdir)`` of ``config``, for the job whose fields
        (``num``, ``id``, ``override_dirname``) ``job`` holds (as ``config.hydra.job`` does)."""
        return os.path.join(self._value(config, "dir", job), self._value(config, "subdir", job))

    def from_fields(self, config: DictConfig) -> bool:
        """Whether :meth:`output_dir` joins ``config``'s job folders from the job's fields alone (or constants),
        never reading the job's nodes of ``config``."""
        return all(self._planned(config, name)[1] is not None for name in ("dir", "subdir"))

    def _planned(self, config: DictConfig, name: str) -> tuple[str, list[str | tuple[str]] | str | None]:
        """``hydra.sweep.<name>`` as written, and how it is resolved (None: by OmegaConf, each time)."""
        node = config.hydra.sweep._get_node(name)
        raw = node._value() if node is not None else None
        if not isinstance(raw, str):
            return "", None
        if raw not in self._plans:
            self._plans[raw] = self._plan(raw)
        return raw, self._plans[raw]

    def _value(self, config: DictConfig, name: str, job: dict[str, Any]) -> str:
        raw, plan = self._planned(config, name)
        if plan is None:
            return str(OmegaConf.select(config, f"hydra.sweep.{name}"))
        if plan == self._ONCE:
            if (name, raw) not in self._resolved:
                self._resolved[(name, raw)] = str(OmegaConf.select(config, f"hydra.sweep.{name}"))
            return self._resolved[(name, raw)]
        return "".join(part if isinstance(part, str) else str(job[self._JOB_KEYS[part[0]]]) for part in plan)

    def _plan(self, raw: str) -> list[str | tuple[str]] | str | None:
        """How ``raw`` is resolved: once (``_ONCE``), from plain text and job keys (``(key,)``), or by OmegaConf
        each time (None)."""
        if "\\" in raw:
            return None
        plan: list[str | tuple[str]] = []
        at = 0
        for match in self._PART.finditer(raw):
            key = match.group(1).strip()
            if key not in self._JOB_KEYS and key not in self._SWEEP_CONSTANT:
                return None
            plan += [raw[at:match.start()], (key,)]
            at = match.end()
        plan.append(raw[at:])
        if "${" in "".join(part for part in plan if isinstance(part, str)):
            return None  # a nested or unusual interpolation: OmegaConf's
        keys = {part[0] for part in plan if not isinstance(part, str)}
        if not keys & self._JOB_KEYS.keys():
            return self._ONCE
        if keys & self._SWEEP_CONSTANT:
            return None
        return [part for part in plan if part != ""]


def lean_bookkeeping(config: DictConfig, dirs: SweepDirs) -> bool:
    """Whether a job's bookkeeping on ``config`` (with no callbacks) reads none of the job's own fields from it
    and writes nothing: no ``.hydra/`` (``hydra.output_subdir: null``), no job logging (``hydra/job_logging:
    none``, not verbose), no ``hydra.job.env_set``, and ``dirs`` joins the job's folder from its fields.
    mltrain's own defaults are all of these. Then :func:`job_bookkeeping` given the job's ``task`` has only
    the job's folder to make and the ``JobReturn`` to fill in.
    """
    hydra = config.hydra
    logging_config = hydra.job_logging
    return (hydra.output_subdir is None and isinstance(logging_config, DictConfig)
            and logging_config.get("root") is None and hydra.verbose is False and not hydra.job.env_set
            and dirs.from_fields(config))


def job_bookkeeping(hydra_context: Any, config: DictConfig, job_cfg: DictConfig, value: Any,
                    task_function: Callable[..., Any], *,
                    fresh_hydra: Callable[[], DictConfig] | None = None, dirs: SweepDirs | None = None,
                    task: JobTask | None = None, num: int | None = None) -> Any:
    """``hydra.core.utils.run_job`` (Hydra 1.3), step for step, minus the task call and ``on_job_end``.

    For a job whose body mltrain runs later in a worker thread: ``config`` is the job's whole
    config (``hydra`` node included, ``hydra.job.num`` set), ``job_cfg`` its job part (what the
    task sees), ``value`` what the returned ``JobReturn`` holds until the body ends (see
    :func:`job_ended`), ``task_function`` what ``on_job_start`` callbacks are told runs. Skips
    ``run_job``'s two deep copies of the whole config -- per trial the biggest cost in a
    sweep's main thread. Never changes the working directory (mltrain's launcher refuses
    ``hydra.job.chdir``).

    ``fresh_hydra``: ``config`` is a scratch config that later jobs reuse, and this makes a fresh copy
    of the ``hydra`` node it was made from, before any job's fields were set. HydraConfig then holds
    ``config.hydra`` itself during the bookkeeping, and the ``JobReturn``'s ``hydra_cfg`` -- that copy
    with this job's fields -- is made only if something reads it (a sweep of a thousand trials
    otherwise unpickles a thousand ``hydra`` nodes nobody looks at; see :class:`_LaterHydraReturn`).

    ``task`` (with ``fresh_hydra``, ``dirs`` and the job's number ``num``): where :func:`lean_bookkeeping`
    holds, the job's overrides and ``override_dirname``; ``config`` is then neither read for them nor written.
    """
    from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, env_override

    if task is not None:
        assert fresh_hydra is not None and dirs is not None and num is not None
        return _lean_bookkeeping(config, job_cfg, value, fresh_hydra, dirs, task, num)

    with hydra_config_set(config, adopt=fresh_hydra is not None):
        job = config.hydra.job
        job_fields = {"id": job.id, "num": job.num, "override_dirname": job.override_dirname}
        if dirs is not None:
            output_dir = dirs.output_dir(config, job_fields)
        else:
            output_dir = os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                                      str(OmegaConf.select(config, "hydra.sweep.subdir")))
        hydra_cfg: Any = HydraConfig.instance().cfg
        for node in (config.hydra.runtime, hydra_cfg.hydra.runtime):
            with read_write(node), open_dict(node):
                node.output_dir = os.path.abspath(output_dir)
        ret: Any = JobReturn() if fresh_hydra is None else _LaterHydraReturn()
        ret.cfg = job_cfg
        ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        if fresh_hydra is None:
            ret.hydra_cfg = hydra_cfg
        else:
            _made_later(ret, config, fresh_hydra, job_fields, list(ret.overrides or ()), os.path.abspath(output_dir))
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        ret.working_dir = os.getcwd()
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            hydra_output = Path(config.hydra.runtime.output_dir) / Path(config.hydra.output_subdir)
            save_config(job_cfg, "config.yaml", hydra_output)
            save_config(hydra_cfg, "hydra.yaml", hydra_output)
            save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)
        with env_override(hydra_cfg.hydra.job.env_set):
            hydra_context.callbacks.on_job_start(config=config, task_function=task_function)
            ret.return_value = value
            ret.status = JobStatus.COMPLETED
        ret.task_name = JobRuntime.instance().get("name")
        flush_loggers()
        return ret


def _lean_bookkeeping(config: DictConfig, job_cfg: DictConfig, value: Any, fresh_hydra: Callable[[], DictConfig],
                      dirs: SweepDirs, task: JobTask, num: int) -> Any:
    """What :func:`job_bookkeeping` leaves where :func:`lean_bookkeeping` holds: the same ``JobReturn``."""
    from hydra.core.utils import JobRuntime, JobStatus

    job_fields = {"id": num, "num": num, "override_dirname": task.override_dirname}
    output_dir = os.path.abspath(dirs.output_dir(config, job_fields))
    Path(output_dir).mkdir(parents=True, exist_ok=True)  # each job's own folder, as Hydra makes it
    ret = _LaterHydraReturn()
    ret.cfg = job_cfg
    ret.overrides = list(task.overrides)
    _made_later(ret, config, fresh_hydra, job_fields, list(task.overrides), output_dir)
    ret.working_dir = os.getcwd()
    ret.return_value = value
    ret.status = JobStatus.COMPLETED
    ret.task_name = JobRuntime.instance().get("name")
    return ret


def _made_later(ret: _LaterHydraReturn, config: DictConfig, fresh_hydra: Callable[[], DictConfig],
                job_fields: dict[str, Any], overrides: list[str], output_dir: str) -> None:
    """``ret.hydra_cfg`` is made when first read: the template's ``hydra`` node with this job's fields."""
    fields = {"job": job_fields, "overrides": {"task": overrides}, "runtime": {"output_dir": output_dir}}
    ret.later(int(job_fields["num"]), lambda: _hydra_copy(fresh_hydra(), fields, config))


def _hydra_copy(node: DictConfig, fields: dict[str, dict[str, Any]], parent: DictConfig) -> DictConfig:
    """``{"hydra": node}`` as ``set_hydra_config`` makes it, ``node`` given a job's own ``fields`` first."""
    with read_write(node), open_dict(node):
        for group, values in fields.items():
            for key, value in values.items():
                setattr(node[group], key, value)
    OmegaConf.set_readonly(node, True)
    root = DictConfig({}, flags={"no_deepcopy_set_nodes": True})
    root["hydra"] = node
    root._set_flag("no_deepcopy_set_nodes", None)
    node._set_parent(parent)
    return root


class _LaterHydraReturn(_core_utils.JobReturn):
    """A ``JobReturn`` whose ``hydra_cfg`` is made the first time it is read; ``num`` is the job's number."""

    num: int | None = None
    _make: Callable[[], DictConfig] | None = None
    _made: DictConfig | None = None

    def later(self, num: int, make: Callable[[], DictConfig]) -> None:
        self.num = num
        self._make = make

    @property
    def hydra_cfg(self) -> DictConfig | None:
        if self._made is None and self._make is not None:
            self._made, self._make = self._make(), None
        return self._made

    @hydra_cfg.setter
    def hydra_cfg(self, value: DictConfig | None) -> None:
        self._made, self._make = value, None


def job_number(job_return: Any) -> int:
    """``job_return.hydra_cfg.hydra.job.num``, without making a ``hydra_cfg`` that is made on demand."""
    num = getattr(job_return, "num", None) if isinstance(job_return, _LaterHydraReturn) else None
    return int(num) if num is not None else int(job_return.hydra_cfg.hydra.job.num)


def job_ended(hydra_context: Any, config: DictConfig, job_return: Any) -> None:
    """The ``on_job_end`` callbacks ``run_job`` fires, for a job :func:`job_bookkeeping` began."""
    hydra_context.callbacks.on_job_end(config=config, job_return=job_return)
