"""The hardware probe: nvidia-smi's output parsed (hostile: bounded, odd lines skipped), records shown and compared."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from mltrain.hosts.hardware import describe, differences, inventory, parse_query, record
from mltrain.hosts.runner import LOCAL
from tests.gpus import fake_gpu_path


def test_query_lines_are_parsed_and_junk_is_skipped() -> None:
    text = "0, NVIDIA H200, 143771, 550.54.15, GPU-a\nnot a gpu\n1, Tesla\x1b[31m T4, [N/A], 535.1, GPU-b\n, , ,\n"
    gpus = parse_query(text)
    assert [(g.index, g.name, g.memory_mib, g.driver) for g in gpus] == [
        (0, "NVIDIA H200", 143771, "550.54.15"), (1, "Tesla[31m T4", None, "535.1")]


def test_the_fake_gpu_machine_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in fake_gpu_path(tmp_path / "bin", gpus=3).items():
        monkeypatch.setenv(name, value)
    found = inventory(LOCAL)
    assert found.indices == (0, 1, 2) and found.cuda == "12.4" and found.error is None
    hardware = record(LOCAL, found, (1,), cpus_limit=2.0)
    assert hardware["gpu_count"] == 1 and hardware["gpus"][0]["index"] == 1
    assert (hardware["driver"], hardware["cuda"], hardware["cpus_limit"]) == ("550.54.15", "12.4", 2.0)
    assert hardware["cpus"] >= 1 and hardware["memory_bytes"] > 0
    assert describe(hardware)[0] == "gpus        1 x NVIDIA H200 140 GiB (driver 550.54.15, CUDA 12.4)"


def test_no_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert inventory(LOCAL).gpus == ()


def test_a_failing_nvidia_smi_is_an_error_not_zero_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "nvidia-smi"
    broken.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver'\n"
                      "exit 9\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    found = inventory(LOCAL)
    assert found.gpus == () and found.error is not None and "could not communicate" in found.error


def test_differences_name_what_changed() -> None:
    a = {"gpus": [{"name": "A100", "memory_mib": 40960}], "gpu_count": 1, "driver": "535", "cuda": "12.2", "cpus": 8}
    b = {"gpus": [{"name": "H200", "memory_mib": 143771}], "gpu_count": 1, "driver": "550", "cuda": "12.4", "cpus": 8}
    assert differences(a, b) == ["gpus.name: ['A100'] -> ['H200']", "gpus.memory_mib: [40960] -> [143771]",
                                 "driver: '535' -> '550'", "cuda: '12.2' -> '12.4'"]
    assert differences(a, a) == []


def test_this_machines_facts_are_probed_once_for_many_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep's trials on this machine share one probe of its name, CPUs and memory; another host is asked
    each time."""
    from mltrain.hosts import hardware
    from mltrain.hosts.runner import LocalRunner

    asked: list[object] = []

    def ask(runner: object) -> tuple[str, int, int]:
        asked.append(runner)
        return ("box", 2, 1024)

    monkeypatch.setattr(hardware, "_ask_host", ask)
    monkeypatch.setattr(hardware, "_HOST_FACTS", {})
    local = LocalRunner()
    assert hardware._host(local) == hardware._host(local) == ("box", 2, 1024)
    assert asked == [local]
    other = SimpleNamespace(name="host 10.0.0.1")
    hardware._host(other)  # type: ignore[arg-type]
    hardware._host(other)  # type: ignore[arg-type]
    assert asked == [local, other, other]
