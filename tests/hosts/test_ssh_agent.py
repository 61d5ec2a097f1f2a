"""The SSH helper's upload steps, run in-process on a local folder (no sshd needed): batches of small blobs are
verified one by one and placed atomically, with or without O_TMPFILE; what is asked about is answered right."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from mltrain.hosts import agent as remote_agent
from mltrain.hosts.agent import HEAD, Agent, Wire
from mltrain.targets.ssh.codec import Codecs


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEAD.pack(kind, len(payload)) + payload


def request(obj: dict[str, Any]) -> bytes:
    return frame(b"J", json.dumps(obj).encode())


def serve(root: Path, data: bytes, *, tmpfile: bool = True) -> list[dict[str, Any]]:
    """Feed ``data`` to a helper rooted at ``root``; its JSON replies, heartbeats left out."""
    out = io.BytesIO()
    agent = Agent(str(root), Wire(io.BytesIO(data), out), heartbeat=5.0)
    agent.tmpfile = agent.tmpfile and tmpfile
    agent.serve()
    agent._end_upload()  # what the helper's exit does (a fatal error ends it holding the lock)
    replies, view = [], out.getvalue()
    while view:
        kind, size = HEAD.unpack(view[:HEAD.size])
        payload, view = view[HEAD.size:HEAD.size + size], view[HEAD.size + size:]
        if kind == b"J" and b'"hb"' not in payload:
            replies.append(json.loads(payload))
    return replies


def blob(seed: int, size: int = 4096) -> tuple[str, bytes]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    return hashlib.sha256(b"digest" + data).hexdigest(), data  # any 64-hex name: the helper only checks sha256


def batch_head(blobs: list[tuple[str, bytes]], **extra: Any) -> bytes:
    """A batch's header as the client sends it: each blob's digest and size, one sha256 of their bytes."""
    rows = [[d, len(b)] for d, b in blobs]
    return request({"batch": rows, "sha256": hashlib.sha256(b"".join(b for _, b in blobs)).hexdigest(), **extra})


def stored(root: Path) -> dict[str, bytes]:
    """Every file under blobs/ but the upload lock, by path relative to blobs/."""
    out = {}
    for path in (root / "blobs").rglob("*"):
        if path.is_file() and path.name != "upload.lock":
            out[str(path.relative_to(root / "blobs"))] = path.read_bytes()
    return out


@pytest.mark.parametrize("tmpfile", [True, False], ids=["o_tmpfile", "named_temp"])
def test_batch_places_each_blob_read_only(tmp_path: Path, tmpfile: bool) -> None:
    blobs = [blob(i) for i in range(5)]
    stream = (request({"op": "put_blobs", "stream": True}) + batch_head(blobs)
              + frame(b"D", b"".join(b for _, b in blobs)) + request({"end": True}))
    (reply,) = serve(tmp_path, stream, tmpfile=tmpfile)
    assert reply == {"placed": 5, "bytes": 5 * 4096}
    assert stored(tmp_path) == {f"{d[:2]}/{d[2:]}": b for d, b in blobs}
    for d, _ in blobs:
        assert (tmp_path / "blobs" / d[:2] / d[2:]).stat().st_mode & 0o777 == 0o444


@pytest.mark.parametrize("tmpfile", [True, False], ids=["o_tmpfile", "named_temp"])
def test_a_blob_failing_verification_is_never_placed(tmp_path: Path, tmpfile: bool) -> None:
    blobs = [blob(i) for i in range(3)]
    sent = [blobs[0], (blobs[1][0], blobs[1][1][:-1] + b"?"), blobs[2]]  # one byte changed on the way
    stream = (request({"op": "put_blobs", "stream": True}) + batch_head(blobs)
              + frame(b"D", b"".join(b for _, b in sent)) + request({"end": True}))
    (reply,) = serve(tmp_path, stream, tmpfile=tmpfile)
    assert reply["fatal"] and "failed verification" in reply["error"]
    assert stored(tmp_path) == {}  # a batch is checked whole before any of it is written; no temp file either


def test_a_batch_that_does_not_match_its_header_is_refused(tmp_path: Path) -> None:
    digest, data = blob(0)
    stream = (request({"op": "put_blobs", "stream": True})
              + request({"batch": [[digest, len(data) + 1]], "sha256": hashlib.sha256(data).hexdigest()})
              + frame(b"D", data) + request({"end": True}))
    (reply,) = serve(tmp_path, stream)
    assert reply["fatal"] and "does not match" in reply["error"]
    assert stored(tmp_path) == {}


def test_a_cut_batch_leaves_nothing(tmp_path: Path) -> None:
    blobs = [blob(i) for i in range(3)]
    body = frame(b"D", b"".join(b for _, b in blobs))
    assert serve(tmp_path, request({"op": "put_blobs", "stream": True}) + batch_head(blobs)
                 + body[:len(body) // 2]) == []
    assert stored(tmp_path) == {}


def test_begin_upload_lists_what_is_missing_and_how_much_arrived(tmp_path: Path) -> None:
    # many digests in one folder (answered from one listing) and a few in others (one stat each)
    same = [f"00{i:062x}" for i in range(40)]
    other = [f"{i + 1:02x}{i:062x}" for i in range(3)]
    here = {same[0], same[3], other[1]}
    for digest in here:
        path = tmp_path / "blobs" / digest[:2] / digest[2:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "blobs" / "tmp").mkdir()
    (tmp_path / "blobs" / "tmp" / f"{same[1]}.part").write_bytes(b"abc")
    (reply,) = serve(tmp_path, request({"op": "begin_upload", "digests": same + other}))
    assert reply["missing"] == [[d, 3 if d == same[1] else 0] for d in same + other if d not in here]


SOURCE = Path(remote_agent.__file__).read_bytes()
DIGEST = hashlib.sha256(SOURCE).hexdigest()
EVIL = "open({marker!r}, 'w').write('ran')\n"


def boot(home: Path, *, digest: str = DIGEST) -> tuple[Any, list[dict[str, Any]]]:
    """Start the helper as the client does (``-I -S -c BOOT``), with ``home`` as HOME and cwd, offering the source.

    Returns BOOT's request for the source (None if it ran its kept copy) and the JSON frames that followed.
    """
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", remote_agent.BOOT, str(home / "remote"), digest, "5"],
                          input=frame(b"D", SOURCE), capture_output=True, timeout=60, env=env, cwd=home)
    frames, view = [], proc.stdout
    while view:
        _kind, size = HEAD.unpack(view[:HEAD.size])
        frames.append(json.loads(view[HEAD.size:HEAD.size + size]))
        view = view[HEAD.size + size:]
    assert frames, proc.stderr
    asked = frames[0] if frames[0].get("need") == "agent" else None
    return asked, frames[1:] if asked else frames


def kept(home: Path) -> Path:
    return home / ".cache" / "mltrain-agent" / f"agent_{DIGEST[:16]}.py"


def test_boot_keeps_a_verified_copy_in_a_private_folder(tmp_path: Path) -> None:
    """The first start asks for the source and keeps it (0700 folder, outside remote_dir); later starts run it."""
    asked, frames = boot(tmp_path)
    assert asked and frames[0]["root"] == str(tmp_path / "remote")
    assert kept(tmp_path).read_bytes() == SOURCE
    assert kept(tmp_path).parent.stat().st_mode & 0o777 == 0o700
    asked, frames = boot(tmp_path)
    assert not asked and frames[0]["root"] == str(tmp_path / "remote")
    assert sorted(os.listdir(kept(tmp_path).parent)) == [kept(tmp_path).name]  # no __pycache__, no temp file
    assert not (tmp_path / "remote" / "agent").exists()


@pytest.mark.parametrize("plant", ["source", "bytecode", "home_module"])
def test_boot_never_runs_what_a_job_planted(tmp_path: Path, plant: str) -> None:
    """A rewritten copy is noticed by its sha256 and sent again; bytecode and modules planted beside it or in the
    home folder (the helper's cwd) are never imported."""
    import importlib.util

    marker = tmp_path / "planted-code-ran"
    evil = EVIL.format(marker=str(marker))
    assert boot(tmp_path)[0]
    copy = kept(tmp_path)
    if plant == "source":
        copy.write_text(evil)
    elif plant == "bytecode":  # what the import system would load for the genuine source's size and mtime
        stat_ = copy.stat()
        code = compile(evil, str(copy), "exec")
        pyc = Path(importlib.util.cache_from_source(str(copy)))
        pyc.parent.mkdir()
        pyc.write_bytes(importlib._bootstrap_external._code_to_timestamp_pyc(  # type: ignore[attr-defined]
            code, int(stat_.st_mtime), stat_.st_size))
    else:
        for name in ("json", "hashlib", "struct", "stat"):
            (tmp_path / f"{name}.py").write_text(evil)
    asked, frames = boot(tmp_path)
    assert not marker.exists()
    assert bool(asked) is (plant == "source")
    assert frames[0]["root"] == str(tmp_path / "remote")
    assert copy.read_bytes() == SOURCE


def test_boot_repairs_loose_modes_and_refuses_a_folder_not_its_own(tmp_path: Path) -> None:
    folder = kept(tmp_path).parent
    folder.mkdir(parents=True, mode=0o777)
    folder.chmod(0o777)
    assert boot(tmp_path)[0]
    assert folder.stat().st_mode & 0o777 == 0o700  # repaired
    other = tmp_path / "elsewhere"
    other.mkdir()
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    folder.symlink_to(other)  # a link to somewhere else is not the helper's folder
    asked, frames = boot(tmp_path)
    assert asked and frames[0]["root"] == str(tmp_path / "remote")  # it still runs, from the verified source
    assert list(other.iterdir()) == []
    if os.geteuid() == 0:  # a folder of another user (only root can make one here)
        folder.unlink()
        folder.mkdir(mode=0o700)
        os.chown(folder, 4242, 4242)
        asked, frames = boot(tmp_path)
        assert asked and list(folder.iterdir()) == []


def test_boot_reports_why_it_keeps_no_copy(tmp_path: Path) -> None:
    folder = kept(tmp_path).parent
    folder.parent.mkdir(parents=True)
    folder.write_text("not a folder")
    asked, frames = boot(tmp_path)
    assert asked["need"] == "agent" and str(folder) in asked["uncached"]
    assert frames[0]["root"] == str(tmp_path / "remote")


def test_boot_is_not_held_by_a_fifo_in_place_of_its_copy(tmp_path: Path) -> None:
    """Opening a FIFO for reading would wait for a writer forever; the copy is opened non-blocking."""
    kept(tmp_path).parent.mkdir(parents=True, mode=0o700)
    os.mkfifo(kept(tmp_path))
    asked, _frames = boot(tmp_path)  # boot() has a timeout: a hang fails the test
    assert asked and kept(tmp_path).read_bytes() == SOURCE


def test_boot_refuses_a_source_that_does_not_match_its_digest(tmp_path: Path) -> None:
    asked, frames = boot(tmp_path, digest="0" * 64)
    assert asked and "damaged" in frames[0]["error"]
    assert not kept(tmp_path).parent.exists() or list(kept(tmp_path).parent.iterdir()) == []


@pytest.mark.parametrize("resumed", [0, 300_000], ids=["whole", "resumed"])
def test_large_blob_in_chunks_verified_before_it_is_placed(tmp_path: Path, resumed: int) -> None:
    digest, data = blob(7, size=1 << 20)
    part = tmp_path / "blobs" / "tmp" / f"{digest}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:resumed] + b"junk past the offset")
    good = hashlib.sha256(data).hexdigest()
    for trailer, placed in (("0" * 64, False), (good, True)):
        rest = data[resumed:]
        stream = (request({"op": "put_blobs", "stream": True})
                  + request({"blob": digest, "offset": resumed, "size": len(data)})
                  + frame(b"D", rest[:400_000]) + frame(b"D", rest[400_000:])
                  + request({"sha256": trailer}) + request({"end": True}))
        (reply,) = serve(tmp_path, stream)
        assert ("error" not in reply) is placed
        assert stored(tmp_path) == ({f"{digest[:2]}/{digest[2:]}": data} if placed else {})
        if not placed:  # a blob failing its check is dropped whole, so the next try starts from 0
            resumed = 0


def test_have_says_when_the_store_holds_no_blob_nor_part(tmp_path: Path) -> None:
    ask = request({"op": "have", "manifest": "0" * 64, "bases": []})
    assert serve(tmp_path, ask)[0]["empty"] is True
    (tmp_path / "blobs" / "tmp").mkdir(parents=True)
    (tmp_path / "blobs" / "tmp" / f"{'1' * 64}.part").write_bytes(b"x")
    assert serve(tmp_path, ask)[0]["empty"] is False  # a cut upload to resume: ask what arrived
    (tmp_path / "blobs" / "tmp" / f"{'1' * 64}.part").unlink()
    (tmp_path / "blobs" / "ab").mkdir()
    assert serve(tmp_path, ask)[0]["empty"] is False


# ------------------------------------------------- compressed upload data (protocol 2)
def text(size: int) -> bytes:
    line = b"    for item in self.items: total += item.value  # source-like\n"
    return (line * (size // len(line) + 1))[:size]


def test_inflate_gives_exactly_the_declared_bytes() -> None:
    data = text(100_000)
    assert remote_agent.inflate("zlib", zlib.compress(data), len(data)) == data


@pytest.mark.parametrize("stream, declared, fragment", [
    (zlib.compress(bytes(64 << 20)), 1 << 20, "inflates past its declared 1048576 bytes"),  # a bomb: 64 MiB of zeros
    (zlib.compress(text(5000)), 5001, "ends short of its declared 5001 bytes"),
    (zlib.compress(text(5000))[:-10], 5000, "ends short"),  # cut off
    (zlib.compress(text(5000)) + b"extra", 5000, "bytes after the end"),
    (b"not zlib at all" * 10, 5000, "zlib data is damaged"),
    (zlib.compress(b""), 0, "without a positive declared size"),
])
def test_inflate_refuses_a_hostile_or_broken_stream(stream: bytes, declared: int, fragment: str) -> None:
    with pytest.raises(remote_agent.Fatal, match=fragment):
        remote_agent.inflate("zlib", stream, declared)


def test_inflate_stops_a_bomb_at_its_cap_not_after_inflating_it() -> None:
    """Inflating is asked for at most the declared size + 1: a 1 GiB bomb costs a MiB, not a GiB."""
    import tracemalloc

    bomb = zlib.compress(bytes(1 << 30), 9)  # ~1 MB on the wire
    tracemalloc.start()
    try:
        with pytest.raises(remote_agent.Fatal, match="inflates past"):
            remote_agent.inflate("zlib", bomb, 1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_inflate_refuses_a_codec_the_host_did_not_offer() -> None:
    with pytest.raises(remote_agent.Fatal, match="not one this host offered"):
        remote_agent.inflate("brotli", b"x", 1)


def test_lzma_is_offered_and_inflated_capped() -> None:
    """The strong codec beside zlib: exact size, a bomb stops at its cap, a cut stream is refused."""
    from mltrain.targets.ssh.codec import choose, compress

    assert "lzma" in remote_agent.codecs()
    assert choose(["zlib", "lzma"]) == Codecs("zlib", "lzma") and choose(["zlib"]) == Codecs("zlib")
    data = text(200_000)
    assert remote_agent.inflate("lzma", compress("lzma", data), len(data)) == data
    with pytest.raises(remote_agent.Fatal, match="inflates past"):
        remote_agent.inflate("lzma", compress("lzma", bytes(64 << 20)), 1 << 20)
    with pytest.raises(remote_agent.Fatal, match="ends short"):
        remote_agent.inflate("lzma", compress("lzma", data)[:-20], len(data))
    with pytest.raises(remote_agent.Fatal, match="bytes after the end"):
        remote_agent.inflate("lzma", compress("lzma", data) + b"tail", len(data))


def test_an_lzma_stream_asking_for_more_memory_than_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The xz header names the dictionary the decoder allocates: the helper caps it, whatever the sender asks."""
    import lzma

    data = text(100_000)
    stream = lzma.compress(data, format=lzma.FORMAT_XZ, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 8 << 20}])
    assert remote_agent.inflate("lzma", stream, len(data)) == data  # within the real limit
    monkeypatch.setattr(remote_agent, "LZMA_MEMLIMIT", 4 << 20)
    with pytest.raises(remote_agent.Fatal, match="lzma data is damaged"):
        remote_agent.inflate("lzma", stream, len(data))


ZSTD = remote_agent.zstd_module()
NO_ZSTD = ("no zstd module on this Python (pyzstd comes with the dev extra: `make install`; "
           "Python 3.14 has compression.zstd)")


@pytest.mark.skipif(ZSTD is None, reason=NO_ZSTD)
def test_zstd_is_offered_and_inflated_capped_when_the_host_has_it() -> None:
    from mltrain.targets.ssh.codec import choose, compress

    assert remote_agent.codecs()[:2] == ["zstd", "zlib"] and choose(remote_agent.codecs()) == Codecs("zstd")
    data = text(200_000)
    assert remote_agent.inflate("zstd", compress("zstd", data), len(data)) == data
    with pytest.raises(remote_agent.Fatal, match="inflates past"):
        remote_agent.inflate("zstd", compress("zstd", bytes(64 << 20)), 1 << 20)
    with pytest.raises(remote_agent.Fatal, match="ends short"):
        remote_agent.inflate("zstd", compress("zstd", data)[:-20], len(data))


@pytest.mark.skipif(ZSTD is None, reason=NO_ZSTD)
def test_a_zstd_upload_stream_is_placed_byte_identical(tmp_path: Path) -> None:
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.manifest import hash_bytes
    from mltrain.targets.ssh.upload import UploadStats, _blob_frames

    store = BlobStore(tmp_path / "client")
    blobs = {hash_bytes(text(5000 + i)): text(5000 + i) for i in range(3)}
    for digest, data in blobs.items():
        store.put_bytes(digest, data)
    stats = UploadStats()
    frames = _blob_frames(store, [(d, 0) for d in blobs], {d: len(b) for d, b in blobs.items()}, stats,
                          codecs=Codecs("zstd"))
    stream = request({"op": "put_blobs", "stream": True}) + b"".join(frame(k, p) for k, p in frames)
    (reply,) = serve(tmp_path / "host", stream)
    assert reply["placed"] == 3 and stats.codec == "zstd" and stats.packed < stats.bytes / 3
    assert stored(tmp_path / "host") == {f"{d[:2]}/{d[2:]}": b for d, b in blobs.items()}


def test_zlib_is_always_offered_and_chosen_without_zstd(monkeypatch: pytest.MonkeyPatch) -> None:
    from mltrain.targets.ssh import codec

    assert "zlib" in remote_agent.codecs()
    monkeypatch.setattr(remote_agent, "zstd_module", lambda: None)
    assert codec.choose(["zstd", "zlib"]) == Codecs("zlib")
    assert codec.choose([]) is None  # a protocol-1 helper: raw


def test_while_the_link_is_the_bottleneck_batches_go_lzma_and_arrive_byte_identical(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large (incompressible) blobs go first; the text batches behind them, with pieces queued up for the link,
    take the strong codec; the real helper places every blob byte-identical."""
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.manifest import hash_bytes
    from mltrain.targets.ssh import upload

    monkeypatch.setattr(upload, "RATE_SAMPLE", 1)
    monkeypatch.setattr(upload, "READY_SECONDS", 0.0)  # any queue counts: the strong codec from the first batch on
    store = BlobStore(tmp_path / "client")
    small = {hash_bytes(text(4000 + i) + bytes([i % 256])): text(4000 + i) + bytes([i % 256]) for i in range(600)}
    weights = os.urandom(3 << 19)
    blobs = {**small, hash_bytes(weights): weights}
    for digest, data in blobs.items():
        store.put_bytes(digest, data)
    stats = upload.UploadStats()
    order = [*[(d, 0) for d in small], (hash_bytes(weights), 0)]  # the large blob listed last
    frames = list(upload._blob_frames(store, order, {d: len(b) for d, b in blobs.items()}, stats,
                                      codecs=Codecs("zlib", "lzma")))
    heads = [json.loads(p) for k, p in frames if k == b"J"]
    assert heads[0].get("blob") == hash_bytes(weights)  # sent first, though listed last
    assert any(h.get("codec") == "lzma" for h in heads if "batch" in h) and stats.strong > 0
    stream = request({"op": "put_blobs", "stream": True}) + b"".join(frame(k, p) for k, p in frames)
    (reply,) = serve(tmp_path / "host", stream)
    assert reply["placed"] == len(blobs) and stats.codec == "zlib"
    assert stored(tmp_path / "host") == {f"{d[:2]}/{d[2:]}": b for d, b in blobs.items()}


def test_the_strong_codec_waits_for_a_known_rate_and_a_queue_worth_its_time() -> None:
    from mltrain.targets.ssh.upload import RATE_SAMPLE, READY_SECONDS, _Pace, _Piece

    pace = _Pace()
    piece = _Piece([(b"D", bytes(1 << 20))])
    for _ in range(4):
        pace.finished(piece)
    assert not pace.strong()  # 4 MiB queued, but the link's rate is not known yet
    pace.taken(piece, 0.1)
    for _ in range(RATE_SAMPLE >> 20):
        pace.finished(piece)
        pace.taken(piece, 0.1)  # 10 MiB/s
    assert pace.ready == 3 << 20 and READY_SECONDS > 3 / 10
    assert not pace.strong()  # 0.3 s of link time queued: compressing harder would starve the link
    for _ in range(3):
        pace.finished(piece)
    assert pace.strong()  # 0.6 s queued


def test_pack_sends_incompressible_data_raw() -> None:
    from mltrain.targets.ssh.codec import pack

    noise = os.urandom(1 << 20)
    assert pack("zlib", noise) == (None, noise)
    used, packed = pack("zlib", text(1 << 20))
    assert used == "zlib" and len(packed) < (1 << 20) // 4
    assert pack(None, text(1000)) == (None, text(1000))


def compressed_batch(blobs: list[tuple[str, bytes]]) -> bytes:
    return batch_head(blobs, codec="zlib") + frame(b"D", zlib.compress(b"".join(b for _, b in blobs)))


def test_a_compressed_batch_and_large_blob_arrive_byte_identical(tmp_path: Path) -> None:
    small = [(hashlib.sha256(b"s%d" % i).hexdigest(), text(4096 + i)) for i in range(20)]
    big = text(remote_agent.CHUNK * 2 + 12345)
    big_digest = hashlib.sha256(b"big").hexdigest()
    chunks = [big[at:at + remote_agent.CHUNK] for at in range(0, len(big), remote_agent.CHUNK)]
    stream = (request({"op": "put_blobs", "stream": True}) + compressed_batch(small)
              + request({"blob": big_digest, "offset": 0, "size": len(big), "codec": "zlib"})
              + b"".join(frame(b"D", zlib.compress(c)) for c in chunks)
              + request({"sha256": hashlib.sha256(big).hexdigest()}) + request({"end": True}))
    (reply,) = serve(tmp_path, stream)
    assert reply == {"placed": 21, "bytes": sum(len(b) for _, b in small) + len(big)}
    assert stored(tmp_path) == {f"{d[:2]}/{d[2:]}": b for d, b in [*small, (big_digest, big)]}


def test_hostile_compressed_streams_are_refused_and_nothing_is_placed(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    bomb_rows = [[digest, 4096]]
    cases = {
        # a batch declaring 4 KiB whose data inflates to 64 MiB
        "bomb": request({"batch": bomb_rows, "codec": "zlib"}) + frame(b"D", zlib.compress(bytes(64 << 20))),
        # a batch declaring more than any client sends: refused before inflating
        "declared": request({"batch": [[digest, 1 << 30]], "codec": "zlib"}) + frame(b"D", b"x"),
        # a large blob's chunk longer than the blob
        "overrun": request({"blob": digest, "offset": 0, "size": 1000, "codec": "zlib"})
        + frame(b"D", zlib.compress(text(2000))),
        "garbage": request({"blob": digest, "offset": 0, "size": 1000, "codec": "zlib"}) + frame(b"D", b"\x00" * 100),
        "codec": request({"batch": bomb_rows, "codec": "bzip9"}) + frame(b"D", b"x"),
    }
    fragments = {"bomb": "inflates past", "declared": "more than", "overrun": "inflates past",
                 "garbage": "damaged", "codec": "not one this host offered"}
    for name, body in cases.items():
        root = tmp_path / name
        (reply,) = serve(root, request({"op": "put_blobs", "stream": True}) + body + request({"end": True}))
        assert reply["fatal"] and reply["error"].startswith("protocol: ") and fragments[name] in reply["error"], reply
        assert stored(root) == {}, name  # no blob, and no part of one


# ------------------------------------------- a first upload's checkout, built while its blobs arrive
def _first_upload(tmp_path: Path, tree: Path, edit: Any = None, sha256: str | None = None) -> list[dict[str, Any]]:
    """put_blobs with the whole manifest ahead of the blobs, as a first upload sends it: the helper's replies.
    ``edit`` may change the manifest's document (a manifest the host must refuse on its own terms); ``sha256``
    replaces the one sent with it."""
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.take import take_snapshot
    from mltrain.targets.ssh import upload

    store = BlobStore(tmp_path / "client")
    manifest = upload._load(store, take_snapshot(tree, store).manifest.id)
    canonical = manifest.canonical
    if edit is not None:
        doc = json.loads(canonical)
        edit(doc)
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    sizes = {row[3]: row[2] for row in manifest.rows if len(row) == 4 and row[2] > 0}
    head = {"id": manifest.id, "sha256": sha256 or hashlib.sha256(canonical).hexdigest(), "size": len(canonical)}
    frames = upload._blob_frames(store, [(d, 0) for d in sizes], sizes, upload.UploadStats(), codecs=Codecs("zlib"))
    stream = (request({"op": "put_blobs", "stream": True, "manifest": head}) + frame(b"D", zlib.compress(canonical))
              + b"".join(frame(k, p) for k, p in frames))
    return serve(tmp_path / "host", stream)


def _source_tree(root: Path) -> Path:
    (root / "pkg" / "deep").mkdir(parents=True)
    (root / "pkg" / "deep" / "mod.py").write_bytes(text(3000))
    (root / "pkg" / "same.py").write_bytes(text(3000))  # the same blob twice
    (root / "weights.bin").write_bytes(os.urandom(600_000))  # a large blob: chunks
    (root / "empty").write_bytes(b"")
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "pkg" / "link").symlink_to("same.py")
    return root


def test_a_first_upload_gets_its_checkout_built_while_the_blobs_arrive(tmp_path: Path) -> None:
    tree = _source_tree(tmp_path / "tree")
    (reply,) = _first_upload(tmp_path, tree)
    checkout = Path(reply["path"])
    assert checkout == tmp_path / "host" / "checkouts" / checkout.name
    made = {str(p.relative_to(checkout)): p for p in checkout.rglob("*") if not p.is_dir()}
    assert set(made) == {"pkg/deep/mod.py", "pkg/same.py", "weights.bin", "empty", "run.sh", "pkg/link"}
    for name, path in made.items():
        assert path.read_bytes() == (tree / name).read_bytes(), name
    assert os.readlink(made["pkg/link"]) == "same.py" and os.access(made["run.sh"], os.X_OK)
    assert (tmp_path / "host" / "blobs" / "manifests" / checkout.name).exists()  # as put_manifest leaves it
    assert [p.name for p in checkout.parent.iterdir()] == [checkout.name]  # no temp folder left


def test_a_prebuild_that_cannot_finish_leaves_nothing_and_put_manifest_decides(tmp_path: Path) -> None:
    """A file where the manifest also wants a folder: the blobs are placed; no checkout, marker or temp folder."""
    def clash(doc: dict[str, Any]) -> None:
        mod = next(row for row in doc["entries"] if row[0] == "pkg/deep/mod.py")
        doc["entries"].append(["pkg/same.py/x", 420, mod[2], mod[3]])

    (reply,) = _first_upload(tmp_path, _source_tree(tmp_path / "tree"), clash)
    assert "path" not in reply and reply["placed"] == 3
    checkouts = tmp_path / "host" / "checkouts"
    assert not checkouts.exists() or list(checkouts.iterdir()) == []
    assert not (tmp_path / "host" / "blobs" / "manifests").exists()


def test_a_manifest_with_an_unsafe_path_sent_ahead_stops_the_helper_before_anything_is_made(tmp_path: Path) -> None:
    (reply,) = _first_upload(tmp_path, _source_tree(tmp_path / "tree"), lambda doc: doc["entries"].append(
        ["pkg/zz", 511, 5, "0" * 64, "../../../etc/passwd"]))
    assert "unsafe path" in reply["error"] and reply.get("fatal") is True
    assert not (tmp_path / "host" / "checkouts").exists()
    assert stored(tmp_path / "host") == {}


def test_a_manifest_that_does_not_match_its_sha256_is_only_not_prebuilt(tmp_path: Path) -> None:
    """Damaged on the way (or a client bug): the blobs are placed, no checkout is, put_manifest comes next."""
    (reply,) = _first_upload(tmp_path, _source_tree(tmp_path / "tree"), sha256="0" * 64)
    assert "path" not in reply and reply["placed"] == 3
    assert not (tmp_path / "host" / "checkouts").exists() or list((tmp_path / "host" / "checkouts").iterdir()) == []
