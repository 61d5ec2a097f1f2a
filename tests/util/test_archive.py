"""A corpus of hostile tar streams against mltrain.util.archive: each asserts that nothing outside the run folder
changed (a sentinel folder beside it, with a victim file, is compared before and after) and what was refused."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mltrain.errors import ConfigError
from mltrain.util import safefs
from mltrain.util.archive import Extractor, Limits, Report, extract

Member = tuple[str, str, Any]  # (name, kind, value): file -> bytes, sym/hard -> link text, dir/fifo/chr/blk -> None


def tar_bytes(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE}[kind]
            if kind in ("sym", "hard"):
                info.linkname = value
            if kind == "dir":
                info.mode = 0o755
            tar.addfile(info)
    return buf.getvalue()


def chunks(data: bytes, size: int = 333) -> list[bytes]:
    """Odd-sized pieces, so headers and data straddle chunk boundaries as they do on a socket."""
    return [data[i:i + size] for i in range(0, len(data), size)]


class Scene:
    """A run folder, and a sentinel folder beside it that no stream may change."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sentinel = tmp / "sentinel"
        self.sentinel.mkdir()
        self.victim = self.sentinel / "victim"
        self.victim.write_text("original")
        self.run = tmp / "run"
        self.run.mkdir()
        self.outputs = self.run / "outputs"
        self.metrics = self.run / "metrics.jsonl"
        self.before = self.outside()

    def outside(self) -> dict[str, tuple[str, str]]:
        """Everything under the temp folder but the run folder: type and content (or link text)."""
        seen: dict[str, tuple[str, str]] = {}
        for dirpath, dirnames, filenames in os.walk(self.tmp):
            if Path(dirpath) == self.tmp:
                dirnames.remove("run")
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if path.is_symlink():
                    seen[str(path)] = ("link", os.readlink(path))
                elif path.is_file():
                    seen[str(path)] = ("file", path.read_text(errors="replace"))
                else:
                    seen[str(path)] = ("other", "")
        return seen

    def extract(self, *members: Member, fmt: int = tarfile.PAX_FORMAT, limits: Limits | None = None) -> Report:
        report = extract(chunks(tar_bytes(*members, fmt=fmt)), folders={"run/outputs": self.outputs},
                         files={"run/metrics.jsonl": self.metrics}, limits=limits or Limits())
        self.check()
        return report

    def check(self, *, planted: str = "") -> None:
        assert self.outside() == self.before, "something outside the run folder changed"
        leftovers = [p for p in self.run.rglob("*") if p.name.startswith(safefs.TEMP_PREFIX) and p.name != planted]
        assert leftovers == [], leftovers

    def links(self) -> dict[str, str]:
        return {str(p.relative_to(self.outputs)): os.readlink(p) for p in self.outputs.rglob("*") if p.is_symlink()}


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    return Scene(tmp_path)


def refused(report: Report) -> dict[str, str]:
    """Refusals by member name (as shown: a long one is cut to 200 characters)."""
    return dict(line.split(": ", 1) for line in report.refused)  # type: ignore[misc]


def reason(report: Report, name: str) -> str:
    return refused(report)[safefs.show(name)]


# ------------------------------------------------------------------ the corpus
def test_a_link_then_a_file_through_it_writes_nothing_outside(scene: Scene) -> None:
    report = scene.extract(
        ("run/outputs/a", "sym", str(scene.sentinel)),  # absolute: refused
        ("run/outputs/a/victim", "file", b"pwned"),
        ("run/outputs/b", "sym", "../../sentinel"),  # relative, leaving: refused
        ("run/outputs/b/victim", "file", b"pwned"),
        ("run/outputs/sub", "dir", None),
        ("run/outputs/c", "sym", "sub"),  # inside: kept, but never written through
        ("run/outputs/c/x", "file", b"through"),
    )
    why = refused(report)
    assert "leading outside" in why["run/outputs/a"] and "leading outside" in why["run/outputs/b"]
    assert "its folder c is a link" in why["run/outputs/c/x"]
    assert scene.links() == {"c": "sub"}
    assert not (scene.outputs / "sub" / "x").exists()
    # the names the refused links had are folders of the outputs' own now: written inside
    assert (scene.outputs / "a" / "victim").read_bytes() == b"pwned"
    assert not (scene.outputs / "a").is_symlink()


def test_old_temp_name_planted_as_a_link_through_a_chain(scene: Scene) -> None:
    """The attack on the old extractor: ``f.mltrain-tmp`` planted as a link (each hop inside by its text)."""
    report = scene.extract(
        ("run/outputs/sub", "dir", None),
        ("run/outputs/sub/up", "sym", ".."),  # -> the outputs folder: inside
        ("run/outputs/l1", "sym", "sub/up/../.."),  # reads as ".", is the run folder's parent
        ("run/outputs/f.mltrain-tmp", "sym", "l1/sentinel/victim"),
        ("run/outputs/f", "file", b"payload"),
    )
    assert scene.victim.read_text() == "original"
    assert (scene.outputs / "f").read_bytes() == b"payload"
    why = refused(report)
    assert "through other links" in why["run/outputs/l1"]
    assert "through other links" in why["run/outputs/f.mltrain-tmp"]
    assert scene.links() == {"sub/up": ".."}


def test_our_temp_name_planted_in_advance_is_never_opened(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    planted = ".mltrain-0123456789abcdef.tmp"
    data = tar_bytes(
        ("run/outputs/victim", "file", b"inside victim"),
        ("run/outputs/" + planted, "sym", "victim"),
        ("run/outputs/f", "file", b"payload"),
        fmt=tarfile.GNU_FORMAT,
    )
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        cut = tar.getmember("run/outputs/f").offset
    extractor = Extractor(folders={"run/outputs": scene.outputs}, limits=Limits())
    for piece in chunks(data[:cut]):
        extractor.feed(piece)
    assert (scene.outputs / planted).is_symlink()
    names = iter([planted, planted, "fresh"])
    asked: list[str] = []

    def predictable() -> str:
        asked.append(next(names, "later"))
        return safefs.TEMP_PREFIX + asked[-1] + safefs.TEMP_SUFFIX if asked[-1] != planted else planted

    monkeypatch.setattr(safefs, "temp_name", predictable)
    for piece in chunks(data[cut:]):
        extractor.feed(piece)
    report = extractor.close()
    assert asked[:3] == [planted, planted, "fresh"]  # the planted name was tried, refused by O_EXCL, passed over
    assert (scene.outputs / "victim").read_bytes() == b"inside victim"
    assert (scene.outputs / "f").read_bytes() == b"payload"
    assert os.readlink(scene.outputs / planted) == "victim"
    assert report.refused == [] and report.stopped is None
    scene.check(planted=planted)


def test_dotdot_and_absolute_names_are_refused(scene: Scene) -> None:
    report = scene.extract(
        ("run/outputs/../../sentinel/victim", "file", b"pwned"),
        (str(scene.victim), "file", b"pwned"),
        ("/run/outputs/abs.txt", "file", b"pwned"),
        ("run/outputs/sub/../../../sentinel/new", "file", b"pwned"),
        ("./run/outputs/ok.txt", "file", b"fine"),
        ("run/outputs/./dot/ok.txt", "file", b"fine"),
    )
    assert (scene.outputs / "ok.txt").read_text() == "fine"
    assert (scene.outputs / "dot" / "ok.txt").read_text() == "fine"
    assert len(report.refused) == 4
    assert all(line.endswith("not a clean relative path") for line in report.refused)


def test_hard_links_only_to_a_file_extracted_before(scene: Scene) -> None:
    report = scene.extract(
        ("run/outputs/good", "file", b"good bytes"),
        ("run/outputs/h-abs", "hard", str(scene.victim)),
        ("run/outputs/h-up", "hard", "run/outputs/../../sentinel/victim"),
        ("run/outputs/h-rel", "hard", "sentinel/victim"),
        ("run/outputs/h-later", "hard", "run/outputs/later"),
        ("run/outputs/h-good", "hard", "run/outputs/good"),
        ("run/outputs/later", "file", b"later"),
    )
    why = refused(report)
    assert set(why) == {"run/outputs/h-abs", "run/outputs/h-up", "run/outputs/h-rel", "run/outputs/h-later"}
    assert all("hard link" in reason for reason in why.values())
    copy = scene.outputs / "h-good"
    assert copy.read_bytes() == b"good bytes"
    assert copy.stat().st_ino != (scene.outputs / "good").stat().st_ino  # a copy, never a link
    scene.victim.write_text("changed")  # and nothing here is tied to the victim
    assert all(p.read_bytes() != b"changed" for p in scene.outputs.iterdir())
    scene.victim.write_text("original")


def test_devices_fifos_and_unknown_types_are_refused_and_the_stream_stays_in_step(scene: Scene) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind in (("fifo", tarfile.FIFOTYPE), ("chr", tarfile.CHRTYPE), ("blk", tarfile.BLKTYPE)):
            info = tarfile.TarInfo(f"run/outputs/{name}")
            info.type, info.devmajor, info.devminor = kind, 1, 3
            tar.addfile(info)
        odd = tarfile.TarInfo("run/outputs/odd")
        odd.type, odd.size = b"Z", 700  # a type nobody defines, with data: read past by its size
        tar.addfile(odd, io.BytesIO(b"z" * 700))
        after = tarfile.TarInfo("run/outputs/after.txt")
        after.size = 5
        tar.addfile(after, io.BytesIO(b"after"))
    report = extract(chunks(buf.getvalue()), folders={"run/outputs": scene.outputs}, limits=Limits())
    scene.check()
    why = refused(report)
    assert "fifo" in why["run/outputs/fifo"]
    assert "character device" in why["run/outputs/chr"] and "block device" in why["run/outputs/blk"]
    assert "type b'Z'" in why["run/outputs/odd"]
    assert sorted(p.name for p in scene.outputs.iterdir()) == ["after.txt"]
    assert (scene.outputs / "after.txt").read_bytes() == b"after"


def test_duplicate_names_same_type_last_wins_a_change_of_type_is_refused(scene: Scene) -> None:
    report = scene.extract(
        ("run/outputs/dup", "file", b"one"),
        ("run/outputs/dup", "file", b"two"),
        ("run/outputs/ln", "sym", "dup"),
        ("run/outputs/ln", "sym", "d"),
        ("run/outputs/d", "dir", None),
        ("run/outputs/d", "dir", None),
        ("run/outputs/d/in", "file", b"kept"),
        ("run/outputs/dup", "dir", None),  # file -> folder
        ("run/outputs/d", "file", b"x"),  # folder -> file
        ("run/outputs/ln", "file", b"x"),  # link -> file
        ("run/outputs/dup", "sym", "d"),  # file -> link
        ("run/outputs/ln", "dir", None),  # link -> folder
    )
    assert (scene.outputs / "dup").read_bytes() == b"two"
    assert scene.links() == {"ln": "d"}
    assert (scene.outputs / "d" / "in").read_bytes() == b"kept"
    assert len(report.refused) == 5
    assert all("may not change type" in line for line in report.refused)


def test_a_folder_that_turns_into_a_link_mid_stream(scene: Scene) -> None:
    report = scene.extract(
        ("run/outputs/d", "dir", None),
        ("run/outputs/d", "sym", str(scene.sentinel)),
        ("run/outputs/d/victim", "file", b"pwned"),
        ("run/outputs/e", "dir", None),
        ("run/outputs/e", "sym", "d"),  # inside, but still a change of type
        ("run/outputs/e/f", "file", b"in e"),
    )
    assert "may not change type" in refused(report)["run/outputs/d"]
    assert "may not change type" in refused(report)["run/outputs/e"]
    assert not (scene.outputs / "d").is_symlink() and not (scene.outputs / "e").is_symlink()
    assert (scene.outputs / "d" / "victim").read_bytes() == b"pwned"  # inside the outputs' own folder
    assert (scene.outputs / "e" / "f").read_bytes() == b"in e"


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_over_long_names_are_refused(scene: Scene, fmt: int) -> None:
    longest = "n" * 255
    report = scene.extract(
        ("run/outputs/" + "x" * 256, "file", b"too long a name"),
        ("run/outputs/" + "/".join(["p" * 200] * 21), "file", b"too long a path"),  # 4220 bytes
        ("run/outputs/" + longest, "file", b"just fits"),
        ("run/outputs/link", "sym", "a/" * 2049),
        fmt=fmt,
    )
    assert "longer than 255 bytes" in reason(report, "run/outputs/" + "x" * 256)
    assert "longer than 4096 bytes" in reason(report, "run/outputs/" + "/".join(["p" * 200] * 21))
    assert "leading outside" in reason(report, "run/outputs/link")
    assert len(report.refused) == 3
    assert (scene.outputs / longest).read_bytes() == b"just fits"


def test_an_extended_header_over_the_limit_stops_extraction(scene: Scene) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        first = tarfile.TarInfo("run/outputs/first")
        first.size = 1
        tar.addfile(first, io.BytesIO(b"1"))
        huge = tarfile.TarInfo("run/outputs/huge")
        huge.pax_headers = {"comment": "c" * 100_000}
        tar.addfile(huge)
    report = extract(chunks(buf.getvalue()), folders={"run/outputs": scene.outputs}, limits=Limits())
    scene.check()
    assert report.stopped is not None and "extended header of 100,0" in report.stopped
    assert [p.name for p in scene.outputs.iterdir()] == ["first"]


def test_a_link_chain_leaving_the_tree_is_dropped(scene: Scene) -> None:
    report = scene.extract(
        ("run/outputs/l2", "sym", "l1/sentinel/victim"),  # made before the link it goes through
        ("run/outputs/sub", "dir", None),
        ("run/outputs/sub/up", "sym", ".."),
        ("run/outputs/l1", "sym", "sub/up/../.."),  # reads as ".": is the run folder's parent
        ("run/outputs/ok", "sym", "sub/up/sub"),
        ("run/outputs/loop1", "sym", "loop2"),
        ("run/outputs/loop2", "sym", "loop1/x"),
        ("run/outputs/dangling", "sym", "sub/not-yet"),
    )
    assert scene.links() == {"sub/up": "..", "ok": "sub/up/sub", "dangling": "sub/not-yet"}
    assert set(refused(report)) == {"run/outputs/l1", "run/outputs/l2", "run/outputs/loop1", "run/outputs/loop2"}


def test_a_stream_that_never_ends_stops_at_the_byte_limit(scene: Scene) -> None:
    closed: list[bool] = []

    def forever() -> Iterator[bytes]:
        info = tarfile.TarInfo("run/outputs/big")
        info.size = 10**12  # a terabyte promised: the pax header carries it
        yield info.tobuf(tarfile.PAX_FORMAT)
        try:
            while True:
                yield b"\0" * 65536
        finally:
            closed.append(True)

    report = extract(forever(), folders={"run/outputs": scene.outputs}, limits=Limits(max_bytes=1 << 20))
    scene.check()
    assert report.stopped is not None and "MLTRAIN_OUTPUTS_MAX_BYTES" in report.stopped
    assert report.received - (1 << 20) < 65536  # read no further than the chunk that crossed the limit
    assert closed == [True]  # the stream was closed, not left to run on
    assert list(scene.outputs.iterdir()) == []  # the cut file is not left half-written


def test_endless_members_stop_at_the_entry_limit_and_garbage_after_the_end_at_the_byte_limit(scene: Scene) -> None:
    def members() -> Iterator[bytes]:
        n = 0
        while True:
            info = tarfile.TarInfo(f"run/outputs/f{n}")
            info.size = 1
            yield info.tobuf(tarfile.USTAR_FORMAT) + b"x" + b"\0" * 511
            n += 1

    report = extract(members(), folders={"run/outputs": scene.outputs}, limits=Limits(max_files=100))
    scene.check()
    assert report.stopped is not None and "more than 100 entries" in report.stopped
    assert len(list(scene.outputs.iterdir())) == 100

    def garbage_after_end() -> Iterator[bytes]:
        yield tar_bytes(("run/outputs/done", "file", b"done"))
        while True:
            yield b"junk" * 1024

    report = extract(garbage_after_end(), folders={"run/outputs": scene.outputs}, limits=Limits(max_bytes=1 << 20))
    assert report.stopped is not None and "MLTRAIN_OUTPUTS_MAX_BYTES" in report.stopped
    assert (scene.outputs / "done").read_bytes() == b"done"


def test_a_cut_stream_and_a_bad_checksum_place_nothing_half_written(scene: Scene) -> None:
    data = tar_bytes(("run/outputs/a", "file", b"a" * 5000), ("run/outputs/b", "file", b"b" * 5000))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        b_data = tar.getmember("run/outputs/b").offset_data
    report = extract(chunks(data[: b_data + 100]), folders={"run/outputs": scene.outputs}, limits=Limits())
    scene.check()
    assert report.stopped is not None and "cut short" in report.stopped
    assert sorted(p.name for p in scene.outputs.iterdir()) == ["a"]
    broken = bytearray(data)
    broken[b_data - 512] ^= 0x01  # the member's own header (after its pax header)
    report = extract(chunks(bytes(broken)), folders={"run/outputs": scene.run / "again"}, limits=Limits())
    assert report.stopped is not None and "bad header checksum" in report.stopped
    assert sorted(p.name for p in (scene.run / "again").iterdir()) == ["a"]


def test_metrics_file_route_takes_a_regular_file_only(scene: Scene) -> None:
    report = scene.extract(("run/metrics.jsonl", "sym", str(scene.victim)), ("run/metrics.jsonl", "dir", None),
                           ("run/metrics.jsonl/x", "file", b"under a file route"))
    assert len(report.refused) == 2 and all("not a regular file" in line for line in report.refused)
    assert not os.path.lexists(scene.metrics)
    report = scene.extract(("run/metrics.jsonl", "file", b'{"name": "loss", "value": 1}\n'))
    assert report.refused == [] and scene.metrics.read_text().startswith('{"name"')
    scene.metrics.unlink()
    scene.metrics.symlink_to(scene.victim)  # a link already there is never written through
    report = scene.extract(("run/metrics.jsonl", "file", b"pwned"))
    assert "may not change type" in reason(report, "run/metrics.jsonl")


def test_modes_lose_setuid_and_write_for_others_and_ordinary_archives_come_through(scene: Scene) -> None:
    names = ["plain.txt", "with space.txt", "ünïcode-名前.txt", "deep/" * 30 + "leaf", "x" * 150 + "/y" * 3]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name in names:
                if fmt == tarfile.USTAR_FORMAT and (len(name) > 100 or not name.isascii()):
                    continue
                info = tarfile.TarInfo("run/outputs/" + name)
                info.size, info.mode = len(name.encode()), 0o6777
                tar.addfile(info, io.BytesIO(name.encode()))
        dest = scene.run / f"fmt{fmt}"
        report = extract(chunks(buf.getvalue(), 4096), folders={"run/outputs": dest}, limits=Limits())
        assert report.refused == [] and report.stopped is None
        for name in names:
            path = dest / name
            if fmt == tarfile.USTAR_FORMAT and (len(name) > 100 or not name.isascii()):
                continue
            assert path.read_bytes() == name.encode()
            assert stat.S_IMODE(path.stat().st_mode) == 0o755
    undecodable = b"run/outputs/caf\xe9.bin"
    raw = tar_bytes((os.fsdecode(undecodable), "file", b"latin-1 name"), fmt=tarfile.GNU_FORMAT)
    extract(chunks(raw), folders={"run/outputs": scene.outputs}, limits=Limits())
    assert (os.fsencode(scene.outputs) + b"/caf\xe9.bin") in [os.fsencode(p) for p in scene.outputs.iterdir()]
    scene.check()


def test_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Limits.from_env() == Limits()
    monkeypatch.setenv("MLTRAIN_OUTPUTS_MAX_BYTES", "512m")
    monkeypatch.setenv("MLTRAIN_OUTPUTS_MAX_FILES", "10")
    assert (Limits.from_env().max_bytes, Limits.from_env().max_files) == (512 * 1024**2, 10)
    monkeypatch.setenv("MLTRAIN_OUTPUTS_MAX_BYTES", "64GiB")
    assert Limits.from_env().max_bytes == 64 * 1024**3
    monkeypatch.setenv("MLTRAIN_OUTPUTS_MAX_BYTES", "lots")
    with pytest.raises(ConfigError, match="MLTRAIN_OUTPUTS_MAX_BYTES='lots'"):
        Limits.from_env()
    monkeypatch.setenv("MLTRAIN_OUTPUTS_MAX_BYTES", "1g")
    monkeypatch.setenv("MLTRAIN_OUTPUTS_MAX_FILES", "0")
    with pytest.raises(ConfigError, match="MLTRAIN_OUTPUTS_MAX_FILES"):
        Limits.from_env()
