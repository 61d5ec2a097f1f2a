"""The end of a Ray job's log is hostile input: the frame of outputs and metrics, checked before anything is written."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from mltrain.errors import TargetError
from mltrain.snapshot.manifest import FileEntry
from mltrain.targets.ray.frame import MAX_FRAME, exit_code, extract, frame_bytes, visible
from mltrain.targets.ray.package import BIG, MAX_PARTS, split

MARK = "--mltrain-abc--"


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _log(data: bytes, *, size: int | None = None, digest: str | None = None, code: int = 0) -> str:
    text = base64.b64encode(data).decode()
    head = f"{MARK} {len(data) if size is None else size} {digest or hashlib.sha256(data).hexdigest()} {code}"
    return f"job says hi\n\n{head}\n{text}\n{MARK} end\n"


def test_the_job_output_stops_where_the_frame_starts_and_a_partial_marker_waits() -> None:
    log = _log(b"x")
    assert visible(log, MARK, ended=True) == "job says hi\n"
    assert visible("line\n--mltr", MARK, ended=False) == "line"  # could be the frame's first line: held back
    assert visible("line\n--mltr", MARK, ended=True) == "line\n--mltr"
    assert exit_code(_log(b"x", code=143), MARK) == 143


def test_outputs_and_metrics_come_back_into_the_run_folder(tmp_path: Path) -> None:
    data = _tar({"run/outputs/a/model.txt": b"w", "run/metrics.jsonl": b'{"name": "l", "value": 1}\n'})
    notes = extract(frame_bytes(_log(data), MARK) or b"", tmp_path / "outputs", tmp_path / "metrics.jsonl")
    assert notes == []
    assert (tmp_path / "outputs" / "a" / "model.txt").read_bytes() == b"w"
    assert (tmp_path / "metrics.jsonl").read_text().startswith('{"name"')


def test_names_leaving_the_run_folder_are_refused(tmp_path: Path) -> None:
    data = _tar({"run/outputs/../../evil.txt": b"x", "/etc/evil": b"x", "run/outputs/ok.txt": b"y"})
    notes = extract(frame_bytes(_log(data), MARK) or b"", tmp_path / "run" / "outputs", tmp_path / "run" / "m")
    assert not (tmp_path / "evil.txt").exists() and notes
    assert (tmp_path / "run" / "outputs" / "ok.txt").read_bytes() == b"y"


@pytest.mark.parametrize(("log", "fragment"), [
    (_log(b"abc", digest="0" * 64), "checksum"),
    (_log(b"abc", size=MAX_FRAME + 1), "more than"),
    (_log(b"abc")[: -len(f"{MARK} end\n") - 2], "cut short"),
    (_log(b"abc").replace(base64.b64encode(b"abc").decode(), "!!!!"), "base64"),
])
def test_a_bad_frame_is_one_line_and_nothing_is_written(log: str, fragment: str) -> None:
    with pytest.raises(TargetError, match=fragment):
        frame_bytes(log, MARK)


def test_no_frame_means_nothing_to_collect() -> None:
    assert frame_bytes("just output\n", MARK) is None and exit_code("just output\n", MARK) is None


def _entries(count: int, size: int = 100) -> tuple[FileEntry, ...]:
    return tuple(FileEntry(f"src/m{n}.py", 0o644, size, f"{n:064x}") for n in range(count))


def test_a_file_changes_only_its_own_part() -> None:
    before = split(_entries(500))
    changed = list(_entries(500))
    changed[123] = FileEntry("src/m123.py", 0o644, 130, "f" * 64)
    after = split(tuple(changed))
    assert len(before) == len(after) <= MAX_PARTS
    assert sum(1 for a, b in zip(before, after, strict=True) if a != b) == 1


def test_big_files_are_parts_of_their_own_and_parts_stay_few() -> None:
    entries = (*_entries(20), FileEntry("weights.bin", 0o644, BIG + 1, "e" * 64))
    assert [FileEntry("weights.bin", 0o644, BIG + 1, "e" * 64)] in split(entries)
    assert len(split(_entries(20000))) <= MAX_PARTS
