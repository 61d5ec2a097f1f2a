"""Each trial's config made the quick way is exactly the one Hydra composes; the quick validation is exact too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from mltrain.config.compose import CONFIG_PATH, prepare_hydra
from mltrain.config.schema import validate
from mltrain.sweep.compose import TrialComposer
from mltrain.sweep.trial import MetricMonitor, TrialTask


@pytest.fixture
def loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_automatic_config_search_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("pass\n")
    (tmp_path / "conf" / "compute").mkdir(parents=True)
    (tmp_path / "conf" / "compute" / "box.yaml").write_text("type: local\ncancel_grace: 3\n")
    monkeypatch.delenv("MLTRAIN_CONFIG_DIR", raising=False)
    prepare_hydra()
    return ConfigLoaderImpl(config_search_path=create_automatic_config_search_path(None, None, CONFIG_PATH))


def _master(loader: Any, overrides: list[str]) -> DictConfig:
    from hydra.types import RunMode

    cfg: DictConfig = loader.load_configuration(config_name="config", overrides=overrides, run_mode=RunMode.MULTIRUN)
    return cfg


def _plain(cfg: DictConfig) -> Any:
    data = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(data, dict)
    data["hydra"]["runtime"].pop("output_dir", None)
    return data


@pytest.mark.parametrize("trial", [
    ["script=train.py", "params.lr=0.1", "params.batch=32"],
    ["script=train.py", "compute=box", "params.lr=0.01"],
    ["script=train.py", "+params.extra.depth=3", "env_vars.SEED=7"],
    ["compute=box", "script=train.py", "compute.cancel_grace=9", "sweep.max_concurrent=2"],
])
def test_quick_composition_is_hydras(loader: Any, trial: list[str]) -> None:
    master = _master(loader, ["hydra.job.config.override_dirname.exclude_keys=[script]"])
    composer = TrialComposer(loader, master)
    for _ in range(2):  # the second time from the cached template
        assert _plain(composer.compose(trial)) == _plain(loader.load_sweep_config(master, trial))
        quick = composer.job(trial)
        assert quick is not None
        whole = loader.load_sweep_config(master, trial)
        assert OmegaConf.to_container(quick[0]) == {k: v for k, v in _plain(whole).items() if k != "hydra"}
        assert quick[1] == list(whole.hydra.overrides.task)


def test_a_bad_override_gets_hydras_own_error(loader: Any) -> None:
    from hydra.errors import ConfigCompositionException

    composer = TrialComposer(loader, _master(loader, []))
    assert composer.job(["script=train.py", "nosuchkey=1"]) is None
    with pytest.raises(ConfigCompositionException, match="nosuchkey"):
        composer.compose(["script=train.py", "nosuchkey=1"])


def test_a_job_referring_to_hydra_is_composed_whole(loader: Any) -> None:
    composer = TrialComposer(loader, _master(loader, []))
    assert composer.job(["script=train.py", "params.n=${hydra:job.num}"]) is None


def test_quick_validation_equals_validate(loader: Any) -> None:
    composer = TrialComposer(loader, _master(loader, []))
    task = TrialTask()
    for lr in ("0.1", "0.2", "'${env_vars.X}'"):
        trial = ["script=train.py", "+env_vars.X=5", f"params.lr={lr}"]
        job, overrides = composer.job(trial)  # type: ignore[misc]
        prepared = task.prepare_trial(job, overrides)
        assert prepared.spec.params == (("lr", 0.1 if lr == "0.1" else (0.2 if lr == "0.2" else "5")),)
        full = validate(job)
        assert prepared.spec.params == tuple(full.params.items())
        assert prepared.spec.compute == full.compute and prepared.spec.environment == full.environment


def test_metric_monitor_reads_both_channels(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    monitor = MetricMonitor("loss", metrics)
    monitor.feed(b"hello\n::metric loss=0.5 acc=1\n::metric lo")
    monitor.feed(b"ss=0.25\n::metric acc=2\n")
    metrics.write_text('{"name": "loss", "value": 0.125, "step": 3}\n{"name": "acc", "value": 1}\n')
    monitor.poll_file()
    assert monitor.curve() == [0.5, 0.25, 0.125]


def _shape(node: Any, path: str = "") -> list[tuple[str, Any, Any, Any, Any]]:
    """Every node of a config with what a copy must keep: its type, flags, and parent's path."""
    from omegaconf import Container

    found = [(path, type(node).__name__, node._metadata.ref_type, node._metadata.object_type,
              tuple(sorted((node._metadata.flags or {}).items())))]
    if isinstance(node, Container):
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))  # type: ignore[arg-type]
        for key in keys:
            child = node._get_node(key)
            assert child is not None and child._get_parent() is node
            found += _shape(child, f"{path}.{key}")
    return found


@pytest.mark.parametrize("trial", [
    ["script=train.py", "params.lr=0.1", "+params.ref='${params.lr}'"],
    ["script=train.py", "compute=box", "params.lr=0.01", "env_vars.SEED=7"],
    ["compute=box", "script=train.py", "compute.cancel_grace=9"],
])
def test_a_trials_copy_of_its_template_is_a_deep_copy(loader: Any, trial: list[str]) -> None:
    """The composer copies a template by unpickling it once pickled: the same tree as copy.deepcopy, and
    each trial of a grid (value overrides, an interpolation, a config group) still gets Hydra's config."""
    import copy

    composer = TrialComposer(loader, _master(loader, []))
    composer.compose(trial)
    for template in composer._templates.values():
        for fresh, original in ((template.fresh_config(), template.config), (template.fresh_job(), template.job)):
            expected = copy.deepcopy(original)
            assert _shape(fresh) == _shape(expected)
            assert OmegaConf.to_container(fresh) == OmegaConf.to_container(expected)
            assert OmegaConf.to_yaml(fresh) == OmegaConf.to_yaml(expected)
            assert fresh is not original and fresh.get("params") is not original.get("params")
    master = _master(loader, [])
    for lr in ("0.1", "0.2", "0.3"):
        for group in ([], ["compute=box"]):
            grid = [*trial, f"params.lr={lr}", *group]
            assert _plain(composer.compose(grid)) == _plain(loader.load_sweep_config(master, grid))
            job, _ = composer.job(grid)  # type: ignore[misc]
            whole = _plain(loader.load_sweep_config(master, grid))
            assert OmegaConf.to_container(job) == {k: v for k, v in whole.items() if k != "hydra"}


def test_quick_hydra_config_is_set_configs(loader: Any) -> None:
    """``set_hydra_config`` leaves HydraConfig holding the same tree as Hydra's ``set_config``."""
    from hydra.core.hydra_config import HydraConfig

    from mltrain.hydra_compat import hydra_config_set, set_hydra_config

    composer = TrialComposer(loader, _master(loader, []))
    cfg = composer.compose(["script=train.py", "params.lr=0.1", "+params.job='${hydra:job.name}'"])
    with hydra_config_set(None):
        HydraConfig.instance().set_config(cfg)
        theirs = HydraConfig.instance().cfg
        set_hydra_config(cfg)
        ours = HydraConfig.instance().cfg
        assert ours is not theirs and ours.hydra is not cfg.hydra
        assert _shape(ours.hydra) == _shape(theirs.hydra)  # each one's hydra node has cfg as parent (Hydra's hack)
        assert list(ours.keys()) == ["hydra"] and ours._metadata == theirs._metadata
        assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(theirs)
        assert ours.hydra._get_parent() is cfg and OmegaConf.is_readonly(ours.hydra)
        assert HydraConfig.get().job.name == theirs.hydra.job.name
        assert cfg.params.job == theirs.hydra.job.name  # ${hydra:...} resolves through what HydraConfig holds


def test_trial_yaml_from_blocks_is_omegaconfs(loader: Any) -> None:
    """Each trial's config.yaml, made from the top-level blocks it shares with the trial before, is exactly
    ``OmegaConf.to_yaml`` -- for values that compare equal but print differently (1, 1.0, True), an enum,
    a nested block that appears or goes, an interpolation, odd strings, and a config group switch."""
    from enum import Enum

    from mltrain.sweep.yaml_blocks import YamlBlocks

    class Color(Enum):
        RED = 1

    composer = TrialComposer(loader, _master(loader, []))
    blocks = YamlBlocks()
    values = ["1", "1.0", "true", "'1'", "null", "[1,2]", "{a: 1}", "'${params.other}'", "'a: b # c'",
              "'multi\\nline'", "''", "1", "'é'"]
    made = 0
    for value in values:
        for group in ([], ["compute=box"]):
            job, _ = composer.job(["script=train.py", f"+params.x={value}", "+params.other=2", *group])  # type: ignore[misc]
            container = OmegaConf.to_container(job, resolve=False)
            assert isinstance(container, dict)
            assert blocks.to_yaml(job, container) == OmegaConf.to_yaml(job)
            made += 1
    plain = OmegaConf.create({"color": Color.RED, "n": 1, "nested": {"deep": [1, {"x": None}]}, "empty": {}})
    for _ in range(2):
        container = OmegaConf.to_container(plain, resolve=False)
        assert blocks.to_yaml(plain, container) == OmegaConf.to_yaml(plain)  # type: ignore[arg-type]
    assert made == 2 * len(values)


@pytest.mark.parametrize("lean", [False, True], ids=["scratch", "lean"])
def test_bookkeeping_on_a_scratch_config_makes_each_trials_hydra_cfg_later(loader: Any, tmp_path: Path,
                                                                           lean: bool) -> None:
    """Without callbacks the trials share one scratch config, and a trial's ``JobReturn.hydra_cfg`` is made
    only when read -- after later trials changed the scratch -- yet it is the tree the trial's own composed
    config gives, and its number is known without making it. ``lean`` (mltrain's defaults, the sweep's
    folders joined from the job's fields): the same ``JobReturn`` and job folder, the scratch never written."""
    from types import SimpleNamespace

    from omegaconf import open_dict, read_write

    from mltrain.hydra_compat import SweepDirs, job_bookkeeping, job_number

    sweep_dir = tmp_path / "sweep"
    master = _master(loader, [f"hydra.sweep.dir={sweep_dir}"])
    composer = TrialComposer(loader, master)
    dirs = SweepDirs() if lean else None
    context = SimpleNamespace(callbacks=SimpleNamespace(on_job_start=lambda **_: None))
    later, now = [], []
    for num, lr in enumerate(("0.1", "0.2", "0.3")):
        trial = ["script=train.py", f"params.lr={lr}"]
        scratch, fresh_hydra, task = composer.for_bookkeeping(trial, callbacks=None, dirs=dirs)
        assert fresh_hydra is not None and (task is not None) == lean
        before = OmegaConf.to_yaml(scratch)
        whole = composer.compose(trial)
        for cfg in (whole,) if lean else (scratch, whole):
            with read_write(cfg.hydra), open_dict(cfg):
                cfg.hydra.job.id = cfg.hydra.job.num = num
        job = OmegaConf.masked_copy(whole, [str(k) for k in whole if k != "hydra"])
        later.append(job_bookkeeping(context, scratch, job, "pending", print, fresh_hydra=fresh_hydra, dirs=dirs,
                                     task=task, num=num))
        if lean:
            assert OmegaConf.to_yaml(scratch) == before and (sweep_dir / str(num)).is_dir()
        now.append(job_bookkeeping(context, whole, job, "pending", print))
    assert [job_number(ret) for ret in later] == [0, 1, 2] and all(ret._made is None for ret in later)
    for ours, theirs in zip(later, now, strict=True):
        assert ours.overrides == theirs.overrides and ours.working_dir == theirs.working_dir
        assert (ours.cfg, ours.status, ours.task_name) == (theirs.cfg, theirs.status, theirs.task_name)
        assert _shape(ours.hydra_cfg.hydra) == _shape(theirs.hydra_cfg.hydra)
        assert OmegaConf.to_yaml(ours.hydra_cfg) == OmegaConf.to_yaml(theirs.hydra_cfg)
        assert OmegaConf.is_readonly(ours.hydra_cfg.hydra) and ours.hydra_cfg is ours.hydra_cfg
        assert job_number(ours) == job_number(theirs) == ours.hydra_cfg.hydra.job.num
    assert composer.for_bookkeeping(["script=train.py"], callbacks=[{"x": 1}])[1] is None


def test_bookkeeping_is_lean_only_where_nothing_reads_the_jobs_fields(loader: Any, tmp_path: Path) -> None:
    """A job log, ``.hydra/``, ``env_set`` or a folder OmegaConf must resolve each keeps the full bookkeeping."""
    from mltrain.hydra_compat import SweepDirs

    for extra, lean in ([], True), (["hydra/job_logging=default"], False), (["hydra.output_subdir=.hydra"], False), \
            (["+hydra.job.env_set.X=1"], False), (["hydra.sweep.subdir=${hydra.job.name}_${hydra.job.num}"], False):
        composer = TrialComposer(loader, _master(loader, [f"hydra.sweep.dir={tmp_path}", *extra]))
        task = composer.for_bookkeeping(["script=train.py", "params.lr=1"], callbacks=None, dirs=SweepDirs())[2]
        assert (task is not None) == lean, extra
