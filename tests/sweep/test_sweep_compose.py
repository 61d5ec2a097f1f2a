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
