"""Each trial's config exactly as Hydra's ``load_sweep_config`` makes it, at a tenth of the cost.

Composing a config from scratch costs ~55 ms here (defaults tree, file
loads, schema merges); a 100-trial sweep would spend seconds on it before the
first trial may start. But trials usually differ only in *values*
(``params.lr=0.1``), and Hydra itself applies value overrides after the
defaults list is composed, in order, onto the merged config. So the config
for a set of *structural* overrides (config groups, ``hydra.*``) is composed
once by Hydra, and each trial is a copy of it with its value overrides
applied by Hydra's own code for that (~4 ms; ``mltrain.hydra_compat``). Anything
unusual falls back to Hydra's full composition, which also reports errors
in Hydra's words.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

if TYPE_CHECKING:
    from mltrain.hydra_compat import SweepDirs


class TrialComposer:
    def __init__(self, config_loader: Any, master: DictConfig) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from mltrain.hydra_compat import caching_repository

        self.loader = config_loader
        self.master = master
        self._parser = OverridesParser.create()
        self._templates: dict[tuple[str, ...], _Template] = {}
        # A sweep's trials repeat the same few override strings (a grid of a x b trials has a + b of them):
        # each is parsed, and told structural or not, once (Hydra's parser costs ~1 ms an override, the
        # group lookup a stat per config source).
        self._parsed: dict[str, Any] = {}
        self._is_structural: dict[str, bool] = {}
        # The repository as Hydra builds it for a sweep job (hydra.searchpath overrides included),
        # to tell a config group override from a value override the same way Hydra does.
        hydra_overrides = list(OmegaConf.to_container(master.hydra.overrides.hydra))  # type: ignore[arg-type]
        self._repo = caching_repository(config_loader, master.hydra.job.config_name, hydra_overrides)

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        """The trial's whole config, ``hydra`` node included, as ``load_sweep_config`` makes it."""
        try:
            parsed, template, values = self._split(overrides)
            cfg = template.fresh_config()
            self._apply(values, cfg)
        except Exception:
            return self._hydra(overrides)
        self._set_task(cfg, parsed)
        return cfg

    def for_bookkeeping(self, overrides: Sequence[str], callbacks: Any,
                        dirs: SweepDirs | None = None) -> tuple[DictConfig, Callable[[], DictConfig] | None,
                                                                JobTask | None]:
        """A config for a validated trial's bookkeeping (:func:`mltrain.sweep.jobs.begin_job`); when that
        config is a scratch one later trials reuse, what makes a fresh copy of its template's ``hydra`` node;
        and, when the bookkeeping may leave that scratch config alone, the trial's own fields instead.

        That bookkeeping reads only the ``hydra`` node, and of it per trial only ``job.id``/``num``
        (it sets them), ``overrides.task`` and ``job.override_dirname`` (set here). So with no
        Hydra callbacks -- which would see the whole config -- one scratch copy per template serves
        every trial, instead of a deep copy each (~6 ms). Where nothing in the bookkeeping reads
        those fields from the config at all (:func:`mltrain.hydra_compat.lean_bookkeeping`: mltrain's
        defaults, ``dirs`` joining the job's folder from the fields), they come back as a
        :class:`JobTask` and the config is not written: setting them was ~0.5 ms of a trial's serial
        bookkeeping, the ``hydra.job`` fields and ``runtime.output_dir`` ~0.6 ms more.
        """
        if callbacks:
            return self.compose(overrides), None, None
        try:
            parsed, template, _ = self._split(overrides)
        except Exception:
            return self.compose(overrides), None, None
        if template.scratch is None:
            from mltrain.hydra_compat import lean_bookkeeping

            template.scratch = copy.deepcopy(template.config)
            template.lean = dirs is not None and lean_bookkeeping(template.scratch, dirs)
        if template.lean:
            return template.scratch, template.fresh_hydra, self._task(template.scratch, parsed)
        self._set_task(template.scratch, parsed)
        return template.scratch, template.fresh_hydra, None

    @staticmethod
    def _task(cfg: DictConfig, parsed: list[Any]) -> JobTask:
        """A job's own overrides and its ``override_dirname`` (by ``cfg``'s rules for it), as plain values."""
        from mltrain.hydra_compat import overrides_dirname

        task = [o for o in parsed if not o.is_hydra_override()]
        dirname = cfg.hydra.job.config.override_dirname
        return JobTask([str(o.input_line) for o in task], overrides_dirname(
            task, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys))

    @classmethod
    def _set_task(cls, cfg: DictConfig, parsed: list[Any]) -> None:
        """What Hydra records of a job's own overrides: ``hydra.overrides.task``, ``hydra.job.override_dirname``."""
        task = cls._task(cfg, parsed)
        overrides, job = cfg.hydra.overrides, cfg.hydra.job
        # Flags on the two small nodes changed, not on ``hydra``: setting a flag walks the node's whole
        # subtree (OmegaConf's flag cache), and ``hydra`` is hundreds of nodes.
        with read_write(overrides), open_dict(overrides), read_write(job), open_dict(job):
            overrides.task = task.overrides
            job.override_dirname = task.override_dirname

    def job(self, overrides: Sequence[str]) -> tuple[DictConfig, list[str]] | None:
        """Only the job's part of the config (what the task sees) and the task's overrides -- a third of the
        cost of :meth:`compose`, for validating every trial up front. None when that part may refer to the
        ``hydra`` node (``${hydra:...}``): then compose the whole config and set HydraConfig instead."""
        if any("hydra" in text for text in overrides):
            return None
        try:
            parsed, template, values = self._split(overrides)
            if template.refers_to_hydra:
                return None
            job = template.fresh_job()
            self._apply(values, job)
        except Exception:
            return None
        return job, [str(o.input_line) for o in parsed if not o.is_hydra_override()]

    def _hydra(self, overrides: Sequence[str]) -> DictConfig:
        cfg: DictConfig = self.loader.load_sweep_config(self.master, list(overrides))
        return cfg

    def _structural(self, override: Any) -> bool:
        key = str(override.key_or_group)
        if override.is_hydra_override():
            return True
        if key not in self._is_structural:
            self._is_structural[key] = bool(self._repo.group_exists(key))
        return self._is_structural[key]

    def _parse(self, overrides: Sequence[str]) -> list[Any]:
        """Hydra's parse of ``overrides``, each string parsed once per sweep (an Override is never changed
        after parsing: the same object serves every trial that has it)."""
        missing = [text for text in dict.fromkeys(overrides) if text not in self._parsed]
        if missing:
            for text, override in zip(missing, self._parser.parse_overrides(missing), strict=True):
                self._parsed[text] = override
        return [self._parsed[text] for text in overrides]

    def _split(self, overrides: Sequence[str]) -> tuple[list[Any], _Template, list[Any]]:
        """Parsed overrides, the template for their structural part, and their value part."""
        parsed = self._parse(overrides)
        structural = tuple(str(o.input_line) for o in parsed if self._structural(o))
        if structural not in self._templates:
            self._templates[structural] = _Template(self._hydra(structural))
        return parsed, self._templates[structural], [o for o in parsed if not self._structural(o)]

    @staticmethod
    def _apply(values: list[Any], cfg: DictConfig) -> None:
        from mltrain.hydra_compat import apply_value_overrides

        apply_value_overrides(values, cfg)


@dataclass(frozen=True)
class JobTask:
    """A job's own overrides as Hydra records them: ``hydra.overrides.task``, ``hydra.job.override_dirname``."""

    overrides: list[str]
    override_dirname: str


class _Template:
    """A config composed by Hydra for one set of structural overrides, and its job part."""

    def __init__(self, config: DictConfig) -> None:
        self.config = config
        self.job = OmegaConf.masked_copy(config, [str(k) for k in config if k != "hydra"])
        OmegaConf.set_struct(self.job, True)  # as Hydra's root is: a value override may not add keys
        self.refers_to_hydra = "${hydra" in repr(OmegaConf.to_container(self.job))
        self.scratch: DictConfig | None = None  # see TrialComposer.for_bookkeeping
        self.lean = False  # the bookkeeping on ``scratch`` reads no job's fields from it (ditto)
        self._pickled: dict[str, bytes] = {}

    # A trial starts from a copy of its template. Unpickling the template's bytes (pickled once) makes
    # the same tree as ``copy.deepcopy`` -- nodes, flags, metadata, parents -- at a fifth of the cost
    # (OmegaConf's deepcopy walks every node in Python); tests/sweep/test_sweep_compose.py checks they agree.
    def fresh_config(self) -> DictConfig:
        return self._fresh("config", self.config)

    def fresh_job(self) -> DictConfig:
        return self._fresh("job", self.job)

    def fresh_hydra(self) -> DictConfig:
        """A copy of the template's ``hydra`` node alone, without a parent."""
        from mltrain.hydra_compat import pickled_node, unpickled_node

        if "hydra" not in self._pickled:
            node = self.config._get_node("hydra")
            assert isinstance(node, DictConfig)
            self._pickled["hydra"] = pickled_node(node)
        return unpickled_node(self._pickled["hydra"])

    def _fresh(self, name: str, node: DictConfig) -> DictConfig:
        if name not in self._pickled:
            self._pickled[name] = pickle.dumps(node, protocol=pickle.HIGHEST_PROTOCOL)
        fresh: DictConfig = pickle.loads(self._pickled[name])  # bytes this process made
        return fresh
