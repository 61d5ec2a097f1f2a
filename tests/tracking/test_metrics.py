"""Tests for mltrain.tracking.metrics: the in-script helper, the JSON-lines file and the stdout protocol."""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import random
import subprocess
import sys
import textwrap
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

import mltrain.tracking.metrics
from mltrain.tracking.metrics import METRICS_FILE_ENV, Metric, log_metric, parse_line, read_metrics_file, scan_log

MODULE_FILE = Path(mltrain.tracking.metrics.__file__)


@pytest.fixture
def metrics_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv(METRICS_FILE_ENV, str(path))
    return path


@pytest.fixture
def no_metrics_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(METRICS_FILE_ENV, raising=False)


# --- log_metric -------------------------------------------------------------


@pytest.mark.usefixtures("no_metrics_file")
def test_log_metric_prints_protocol_line(capsys: pytest.CaptureFixture[str]) -> None:
    log_metric("loss", 0.25, step=3)
    log_metric("acc", 1)
    log_metric("grad", float("nan"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["::metric loss=0.25 step=3", "::metric acc=1.0"]
    assert [parse_line(line) for line in lines[:2]] == [
        [Metric("loss", 0.25, 3, None)],
        [Metric("acc", 1.0, None, None)],
    ]
    (nan,) = parse_line(lines[2])
    assert nan.name == "grad" and math.isnan(nan.value)


@pytest.mark.usefixtures("no_metrics_file")
def test_printed_floats_round_trip_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    values = [0.1, 1 / 3, 1e-300, -2.5e300, float("inf"), float("-inf")]
    for v in values:
        log_metric("v", v)
    parsed = [m.value for line in capsys.readouterr().out.splitlines() for m in parse_line(line)]
    assert parsed == values


def test_log_metric_appends_json_lines(metrics_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_metric("loss", 0.5, step=0)
    log_metric("loss", 0.25, step=1)
    log_metric("lr", Fraction(1, 4))  # type: ignore[arg-type]  # any numbers.Real is accepted
    assert capsys.readouterr().out == ""
    raw = metrics_file.read_text().splitlines()
    assert len(raw) == 3
    first = json.loads(raw[0])
    assert set(first) == {"name", "value", "step", "time"}
    metrics, offset = read_metrics_file(metrics_file)
    assert offset == metrics_file.stat().st_size
    assert [(m.name, m.value, m.step) for m in metrics] == [("loss", 0.5, 0), ("loss", 0.25, 1), ("lr", 0.25, None)]
    assert all(isinstance(m.time, float) and m.time > 1e9 for m in metrics)


def test_nan_and_inf_survive_the_file(metrics_file: Path) -> None:
    log_metric("a", float("nan"))
    log_metric("b", float("-inf"))
    (a, b), _ = read_metrics_file(metrics_file)
    assert math.isnan(a.value)
    assert b.value == float("-inf")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "non-empty"),
        ("has space", "whitespace"),
        ("tab\there", "whitespace"),
        ("new\nline", "whitespace"),
        ("a=b", "'='"),
        ("step", "reserved"),
        (None, "non-empty string"),
        (3, "non-empty string"),
    ],
)
def test_invalid_names_rejected(name: object, message: str, metrics_file: Path) -> None:
    with pytest.raises(ValueError, match=message):
        log_metric(name, 1.0)  # type: ignore[arg-type]
    assert not metrics_file.exists()


@pytest.mark.parametrize("value", [True, False, "1.0", None, 1j, Decimal("1.5"), [1.0], 10**400])
@pytest.mark.usefixtures("no_metrics_file")
def test_invalid_values_rejected(value: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="'loss'"):
        log_metric("loss", value)  # type: ignore[arg-type]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("step", [True, 1.0, "3"])
@pytest.mark.usefixtures("no_metrics_file")
def test_invalid_steps_rejected(step: object) -> None:
    with pytest.raises(ValueError, match="step"):
        log_metric("loss", 1.0, step=step)  # type: ignore[arg-type]


# --- the stdout line protocol -------------------------------------------------


def test_parse_line_several_metrics_and_step() -> None:
    assert parse_line("::metric loss=0.25 acc=0.91 step=3") == [
        Metric("loss", 0.25, 3, None),
        Metric("acc", 0.91, 3, None),
    ]
    # step may come anywhere and applies to the whole line; whitespace is flexible.
    assert parse_line("::metric\tstep=7   loss=1e-3\r\n") == [Metric("loss", 0.001, 7, None)]
    assert parse_line("::metric a/b.c:d=-2 step=-1\n") == [Metric("a/b.c:d", -2.0, -1, None)]


def test_parse_line_special_values() -> None:
    parsed = parse_line("::metric a=nan b=inf c=-inf d=NaN e=Infinity")
    assert math.isnan(parsed[0].value) and math.isnan(parsed[3].value)
    assert [m.value for m in parsed[1:3]] == [math.inf, -math.inf]
    assert parsed[4].value == math.inf


def test_parse_line_after_carriage_return() -> None:
    assert parse_line(" 45%|####     | 45/100\r::metric loss=0.5\n") == [Metric("loss", 0.5, None, None)]


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n",
        "loss=0.5",
        "::metric",
        "::metric ",
        "::metric\n",
        "::metrics loss=0.5",
        "::metricloss=0.5",
        "x ::metric loss=0.5",
        " ::metric loss=0.5",
        "[INFO] ::metric loss=0.5",
        "::METRIC loss=0.5",
        "::metric loss",
        "::metric loss=",
        "::metric =0.5",
        "::metric loss=abc",
        "::metric loss=0.5 acc",
        "::metric loss=0.5 acc=0.9%",
        "::metric loss==0.5",
        "::metric step=3",
        "::metric loss=0.5 step=1.5",
        "::metric loss=0.5 step=x",
        "::metric loss=0.5 step=1 step=2",
        "::metric loss=0x10",
    ],
)
def test_parse_line_rejects_non_metric_lines(line: str) -> None:
    assert parse_line(line) == []


def test_parse_line_never_raises_on_garbage() -> None:
    rng = random.Random(1234)
    alphabet = "::metric =stepna0.1-+e\t\r\n\x00\ufffd\udcff\u2028é "
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        for line in (text, "::metric " + text):
            result = parse_line(line)
            assert isinstance(result, list)
            assert all(isinstance(m, Metric) and " " not in m.name for m in result)
    assert parse_line(None) == []  # type: ignore[arg-type]
    assert parse_line(b"::metric a=1") == []  # type: ignore[arg-type]


# --- reading the JSON-lines file ---------------------------------------------


def json_line(name: str, value: float, step: int | None = None) -> bytes:
    return (json.dumps({"name": name, "value": value, "step": step, "time": 1.5}) + "\n").encode()


def test_read_missing_file(tmp_path: Path) -> None:
    assert read_metrics_file(tmp_path / "nope.jsonl", 42) == ([], 42)


def test_partial_last_line_is_left_for_later(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    first = json_line("a", 1.0, 0)
    second = json_line("b", 2.0, 1)
    path.write_bytes(first + second[:10])

    metrics, offset = read_metrics_file(path)
    assert metrics == [Metric("a", 1.0, 0, 1.5)]
    assert offset == len(first)
    # Nothing new yet: same offset, nothing returned.
    assert read_metrics_file(path, offset) == ([], offset)

    with path.open("ab") as f:
        f.write(second[10:])
    metrics, offset = read_metrics_file(path, offset)
    assert metrics == [Metric("b", 2.0, 1, 1.5)]
    assert offset == len(first) + len(second)


def test_final_read_consumes_unterminated_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(json_line("a", 1.0).rstrip(b"\n"))
    assert read_metrics_file(path) == ([], 0)
    metrics, offset = read_metrics_file(path, final=True)
    assert metrics == [Metric("a", 1.0, None, 1.5)]
    assert offset == path.stat().st_size


def test_offset_resume_reads_each_metric_once(metrics_file: Path) -> None:
    seen: list[Metric] = []
    offset = 0
    for step in range(5):
        log_metric("loss", 1.0 / (step + 1), step=step)
        batch, offset = read_metrics_file(metrics_file, offset)
        seen.extend(batch)
    assert [m.step for m in seen] == [0, 1, 2, 3, 4]
    assert read_metrics_file(metrics_file, offset) == ([], offset)


def test_garbage_lines_skipped_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "m.jsonl"
    garbage = [
        b"not json at all\n",
        b'{"name": "x"\n',
        b"[1, 2, 3]\n",
        b'{"name": "", "value": 1}\n',
        b'{"name": "x", "value": "1"}\n',
        b'{"name": "x", "value": true}\n',
        b'{"name": "x", "value": 1, "step": 1.5}\n',
        b'{"name": "x", "value": 1, "time": "noon"}\n',
        b'{"name": "x", "value": 1, "step": true}\n',
        b"\xff\xfe\x00garbage\n",
    ]
    path.write_bytes(json_line("ok1", 1.0) + b"".join(garbage) + b"\n" + json_line("ok2", 2.0))
    with caplog.at_level(logging.WARNING, logger="mltrain.tracking.metrics"):
        metrics, offset = read_metrics_file(path)
    assert [m.name for m in metrics] == ["ok1", "ok2"]
    assert offset == path.stat().st_size
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"skipped {len(garbage)} malformed line(s)" in warnings[0].getMessage()


def test_json_integers_and_missing_optional_fields(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"name": "n", "value": 3}\n')
    assert read_metrics_file(path) == ([Metric("n", 3.0, None, None)], path.stat().st_size)


def test_truncated_file_is_read_from_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(json_line("a", 1.0))
    with caplog.at_level(logging.WARNING, logger="mltrain.tracking.metrics"):
        metrics, offset = read_metrics_file(path, 10_000)
    assert [m.name for m in metrics] == ["a"]
    assert offset == path.stat().st_size
    assert "shrank" in caplog.text


def test_large_file_read_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mltrain.tracking.metrics, "_CHUNK", 7)  # lines straddle every chunk boundary
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"".join(json_line(f"m{i}", i, i) for i in range(200)) + b'{"name": "partial')
    metrics, offset = read_metrics_file(path)
    assert [m.step for m in metrics] == list(range(200))
    assert path.read_bytes()[offset:] == b'{"name": "partial'


# --- scanning a captured log ---------------------------------------------------


def test_scan_log(tmp_path: Path) -> None:
    path = tmp_path / "stdout.log"
    path.write_bytes(
        b"starting\n"
        b"::metric loss=1.0 step=0\n"
        b"x ::metric loss=99\n"
        b"\xff\xfe not utf-8 \x80\n"
        b"::metrics loss=99\n"
        b"epoch 1\r::metric loss=0.5 acc=0.8 step=1\r\n"
        b"::metric loss=0.2"
    )
    metrics, offset = scan_log(path)
    assert metrics == [
        Metric("loss", 1.0, 0, None),
        Metric("loss", 0.5, 1, None),
        Metric("acc", 0.8, 1, None),
    ]
    assert path.read_bytes()[offset:] == b"::metric loss=0.2"

    with path.open("ab") as f:
        f.write(b" step=2\nend\n")
    metrics, offset = scan_log(path, offset)
    assert metrics == [Metric("loss", 0.2, 2, None)]
    assert offset == path.stat().st_size
    assert scan_log(tmp_path / "missing.log") == ([], 0)


def test_scan_log_final(tmp_path: Path) -> None:
    path = tmp_path / "stdout.log"
    path.write_bytes(b"::metric loss=0.2")
    assert scan_log(path, final=True) == ([Metric("loss", 0.2, None, None)], path.stat().st_size)


# --- running where mltrain is not installed --------------------------------


def test_module_loads_standalone_without_mltrain(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("mltrain_metrics", {str(MODULE_FILE)!r})
        mod = importlib.util.module_from_spec(spec)
        sys.modules["mltrain_metrics"] = mod
        spec.loader.exec_module(mod)
        assert not any(m == "mltrain" or m.startswith("mltrain.") for m in sys.modules), sorted(sys.modules)
        mod.log_metric("loss", 0.5, step=2)
        print(mod.parse_line("::metric a=1"))
        """
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "::metric loss=0.5 step=2",
        "[Metric(name='a', value=1.0, step=None, time=None)]",
    ]


def test_copied_next_to_script_as_mltrain_metrics(tmp_path: Path) -> None:
    (tmp_path / "mltrain_metrics.py").write_bytes(MODULE_FILE.read_bytes())
    (tmp_path / "train.py").write_text(
        "import mltrain_metrics\nfor i in range(3):\n    mltrain_metrics.log_metric('loss', 1 / (i + 1), step=i)\n"
    )
    out = tmp_path / "m.jsonl"
    done = subprocess.run(
        [sys.executable, "-S", "-E", "train.py"],
        cwd=tmp_path,
        env={METRICS_FILE_ENV: str(out)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    metrics, _ = read_metrics_file(out)
    assert [(m.value, m.step) for m in metrics] == [(1.0, 0), (0.5, 1), (1 / 3, 2)]


def test_module_syntax_stays_valid_on_old_pythons() -> None:
    """Targets may run an older Python than mltrain itself."""
    ast.parse(MODULE_FILE.read_text(), feature_version=(3, 7))


def test_concurrent_writers_do_not_interleave(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    go = tmp_path / "go"
    # Long names make each line larger than a typical stdio buffer chunk.
    writer = textwrap.dedent(
        f"""
        import importlib.util, os, sys, time
        spec = importlib.util.spec_from_file_location("mltrain_metrics", {str(MODULE_FILE)!r})
        mod = importlib.util.module_from_spec(spec)
        sys.modules["mltrain_metrics"] = mod
        spec.loader.exec_module(mod)
        name = sys.argv[1] * 5000
        while not os.path.exists({str(go)!r}):
            time.sleep(0.001)
        for i in range(1000):
            mod.log_metric(name, i, step=i)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", writer, tag],
            env={METRICS_FILE_ENV: str(out)},
            stderr=subprocess.PIPE,
        )
        for tag in ("a", "b")
    ]
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()

    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]
    assert len(records) == 2000
    for tag in ("a", "b"):
        steps = [r["step"] for r in records if r["name"] == tag * 5000]
        assert steps == list(range(1000))
    metrics, offset = read_metrics_file(out)
    assert len(metrics) == 2000 and offset == out.stat().st_size


# ------------------------------------------------------------- hostile files
def test_a_fifo_in_place_of_the_metrics_file_does_not_hang_the_reader(tmp_path: Path) -> None:
    """A job can leave a fifo where its metrics file was; opening one for reading would block for ever."""
    fifo = tmp_path / "metrics.jsonl"
    os.mkfifo(fifo)
    assert read_metrics_file(fifo, final=True) == ([], 0)
    assert scan_log(fifo, final=True) == ([], 0)


def test_a_link_in_place_of_the_metrics_file_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps({"name": "leaked", "value": 1.0}) + "\n")
    link = tmp_path / "metrics.jsonl"
    link.symlink_to(elsewhere)
    assert read_metrics_file(link, final=True)[0] == []


def test_an_endless_line_is_skipped_without_holding_it(tmp_path: Path) -> None:
    log_file = tmp_path / "output.log"
    with open(log_file, "wb") as fh:
        fh.write(b"::metric a=1\n")
        fh.write(b"x" * (3 * mltrain.tracking.metrics.MAX_LINE) + b" ::metric b=2\n")
        fh.write(b"::metric c=3\n")
        fh.write(b"y" * (2 * mltrain.tracking.metrics.MAX_LINE))  # unterminated, never a metric
    metrics, offset = scan_log(log_file, final=True)
    assert [m.name for m in metrics] == ["a", "c"]
    assert offset == log_file.stat().st_size


def test_a_flood_of_metric_lines_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(mltrain.tracking.metrics, "MAX_POINTS", 5)  # the real cap is a million; the rule is the same
    log_file = tmp_path / "output.log"
    log_file.write_text("".join(f"::metric loss={i}\n" for i in range(12)))
    metrics, offset = scan_log(log_file, final=True)
    assert [m.value for m in metrics] == [0, 1, 2, 3, 4]
    assert offset == log_file.stat().st_size
    assert "7 more were dropped" in caplog.text
