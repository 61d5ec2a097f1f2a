"""``hydra/launcher=mltrain`` in an app's own process: each job is a run, its return value or error comes back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig
from tasks import fail_on_one, foo_plus_a, return_100

pytestmark = [
    pytest.mark.usefixtures("hydra_restore_singletons"),
    pytest.mark.filterwarnings("ignore:Future Hydra versions will no longer change working directory:UserWarning"),
]


def sweep(runner: Any, task: Any, tmp_path: Path, *overrides: str) -> Any:
    return runner(calling_file=None, calling_module="hydra.test_utils.a_module", task_function=task,
                  config_path="configs", config_name="compose", temp_dir=tmp_path / "sweep",
                  overrides=["hydra/launcher=mltrain_local", *overrides])


def test_return_values_come_back(hydra_sweep_runner: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTRAIN_HOME", str(tmp_path / "ws"))
    with sweep(hydra_sweep_runner, foo_plus_a, tmp_path, "+a=1,2") as result:
        returns = result.returns[0]
        assert [r.return_value["sum"] for r in returns] == [11, 12]
        assert isinstance(returns[0].return_value["cfg"], DictConfig)
        assert returns[0].return_value["cfg"].a == 1
    assert len(list((tmp_path / "ws" / "runs").iterdir())) == 2  # each job a run ...
    from mltrain.store.db import Store

    with Store(tmp_path / "ws" / "runs.db", create=False) as store:  # ... and the sweep one sweep record
        (record,) = store.find_sweeps()
        assert record.status == "Completed" and record.settings["sampler"] == "basic"
        trials = store.trials(record.id)
        assert [t.params for t in trials] == [["+a=1"], ["+a=2"]]
        assert all(store.get(str(t.run_id)).status == "Completed" for t in trials)


def test_a_jobs_exception_is_reraised(hydra_sweep_runner: Any, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTRAIN_HOME", str(tmp_path / "ws"))
    with pytest.raises(ValueError, match="a=1 is not allowed"), \
            sweep(hydra_sweep_runner, fail_on_one, tmp_path, "+a=0,1"):
        pass


def test_a_closure_is_one_line(hydra_sweep_runner: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mltrain.errors import ConfigError

    monkeypatch.setenv("MLTRAIN_HOME", str(tmp_path / "ws"))

    def local_task(cfg: Any) -> int:
        return 1

    with pytest.raises(ConfigError, match="cannot be sent there"), sweep(hydra_sweep_runner, local_task, tmp_path):
        pass
    assert not (tmp_path / "ws" / "runs").exists()  # nothing started


def test_mltrains_sweeper_samples_an_apps_sweep(hydra_sweep_runner: Any, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTRAIN_HOME", str(tmp_path / "ws"))
    with sweep(hydra_sweep_runner, return_100, tmp_path, "hydra/sweeper=mltrain", "hydra.sweeper.sampler=random",
               "hydra.sweeper.n_trials=3", "hydra.sweeper.seed=7", "+a=interval(0,1)") as result:
        returns = [r for batch in result.returns for r in batch]
        assert [r.return_value for r in returns] == [100, 100, 100]
        assert len({r.overrides[0] for r in returns}) == 3  # three draws
    from mltrain.store.db import Store

    with Store(tmp_path / "ws" / "runs.db", create=False) as store:
        (record,) = store.find_sweeps()
        assert record.settings["sampler"] == "random" and len(store.trials(record.id)) == 3


def test_a_bad_launcher_setting_is_one_line_and_starts_nothing(tmp_path: Path, base_env: dict[str, str]) -> None:
    import shutil
    import subprocess
    import sys

    app = tmp_path / "app"
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples" / "hydra_app", app)
    result = subprocess.run([sys.executable, "my_app.py", "-m", "db=mysql", "hydra/launcher=mltrain",
                             "hydra.launcher.compute=dokcer"], cwd=app, capture_output=True, text=True, timeout=120,
                            env={**base_env, "MLTRAIN_HOME": str(tmp_path / "ws")})
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0] == ("hydra/launcher=mltrain: unknown compute option 'dokcer'; did you mean docker? (available: "
                        "docker, local, ray, spark, ssh); add .mltrain/conf/compute/dokcer.yaml to define it"), \
        result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ws").exists()
