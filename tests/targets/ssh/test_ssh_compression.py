"""Compressed uploads against a real sshd container (issue 17 part 5): what arrives is byte-identical, data that
does not shrink goes raw, a helper that offers no codecs (protocol 1) still gets everything, and a hostile
compressed stream is refused by the real helper with one clear line and nothing placed."""

# ruff: noqa: F811  (the fixture imported from sshtest is named as the test arguments)
from __future__ import annotations

import hashlib
import json
import lzma
import os
import random
import zlib
from pathlib import Path
from typing import Any

import pytest
from sshtest import SshHost, host  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration]


WORDS = [f"name{i}" for i in range(200)] + ["def", "return", "self", "(", ")", ":", "=", "for", "in", "if"] * 10


def source_text(rng: random.Random, size: int) -> bytes:
    lines, made = [], 0
    while made < size:  # a running count: summing the lines on every turn made 2.5 MiB take 35 s
        lines.append(" " * 4 * rng.randint(0, 3) + " ".join(rng.choices(WORDS, k=rng.randint(3, 10))) + "\n")
        made += len(lines[-1])
    return "".join(lines).encode()[:size]


def write(root: Path, files: dict[str, bytes]) -> dict[str, str]:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def arrived(host: SshHost, path: str) -> dict[str, str]:
    out = host.sh(f"cd {path} && find . -type f -exec sha256sum {{}} +")
    return {name.removeprefix("./"): digest for digest, name in (line.split(None, 1) for line in out.splitlines())}


def stage(host: SshHost, tmp_path: Path, source: Path, **settings: Any) -> tuple[Any, Any, str]:
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.take import take_snapshot
    from mltrain.targets.ssh.link import Link
    from mltrain.targets.ssh.upload import UploadStats, stage_snapshot

    store = BlobStore(tmp_path / "blobs")
    manifest = take_snapshot(source, store).manifest.id
    link = Link(host.settings(remote_dir=f"/root/z-{tmp_path.name}", **settings))
    stats = UploadStats()
    try:
        path = stage_snapshot(link, store, manifest, stats)
    finally:
        link.close()
    return stats, link, path


def test_a_compressible_upload_arrives_byte_identical_and_compressed(host: SshHost, tmp_path: Path) -> None:
    rng = random.Random(1)
    files = {f"src/m{i % 7}/f{i}.py": source_text(rng, rng.randint(100, 9000)) for i in range(300)}
    files["data/big.txt"] = source_text(rng, (5 << 20) // 2)  # a large blob: chunks, each its own stream
    expected = write(tmp_path / "src", files)
    stats, link, path = stage(host, tmp_path, tmp_path / "src")
    assert arrived(host, path) == expected
    total = sum(map(len, files.values()))
    assert stats.codec in link.info["codecs"] and stats.codec in ("zlib", "zstd")
    assert stats.bytes == total and stats.skipped == 0
    assert stats.packed < total / 2.5  # source text: ~3-4:1
    assert link.bytes_sent < total / 2.5  # what the helper's channel carried, requests and manifest included


def test_with_pieces_queued_for_the_link_batches_go_lzma_and_arrive_byte_identical(
        host: SshHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real host's Python inflates lzma too: batches take it while the link is the bottleneck (forced here:
    any queue counts), the large blob goes first and fast, and every file arrives as it was."""
    from mltrain.targets.ssh import upload

    monkeypatch.setattr(upload, "RATE_SAMPLE", 1)
    monkeypatch.setattr(upload, "READY_SECONDS", 0.0)
    rng = random.Random(3)
    files = {f"src/f{i}.py": source_text(rng, rng.randint(500, 6000)) for i in range(600)}
    files["data/weights.bin"] = os.urandom(3 << 19)
    expected = write(tmp_path / "src", files)
    stats, link, path = stage(host, tmp_path, tmp_path / "src")
    assert "lzma" in link.info["codecs"]
    assert arrived(host, path) == expected
    assert stats.strong > 0 and stats.bytes == sum(map(len, files.values()))


def test_an_incompressible_blob_is_sent_raw(host: SshHost, tmp_path: Path) -> None:
    files = {"weights.bin": os.urandom(3 << 19), **{f"rand/f{i}": os.urandom(4096) for i in range(50)}}
    expected = write(tmp_path / "src", files)
    stats, _, path = stage(host, tmp_path, tmp_path / "src")
    assert arrived(host, path) == expected
    assert stats.codec is not None  # agreed, and then not used for these
    assert stats.skipped == 3  # the batch of small files and both chunks of weights.bin: as they were
    assert stats.packed == stats.bytes == sum(map(len, files.values()))


def test_a_helper_offering_no_codecs_gets_raw_bytes(host: SshHost, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A protocol-1 helper (no ``codecs`` in its hello) knows nothing of compressed frames: it must get none."""
    import mltrain.targets.ssh.link as link_module

    source = link_module.AGENT_SOURCE()
    old = source.replace(b"PROTOCOL = 2", b"PROTOCOL = 1").replace(b', "codecs": codecs()}', b"}")
    assert old.count(b"PROTOCOL = 1") == 1 and b'"codecs"' not in old
    monkeypatch.setattr(link_module, "AGENT_SOURCE", lambda: old)
    rng = random.Random(2)
    files = {f"src/f{i}.py": source_text(rng, 4096) for i in range(100)}
    files["data/big.txt"] = source_text(rng, 1 << 20)
    expected = write(tmp_path / "src", files)
    stats, link, path = stage(host, tmp_path, tmp_path / "src")
    assert link.info["protocol"] == 1 and "codecs" not in link.info
    assert arrived(host, path) == expected
    assert stats.codec is None and stats.skipped == 0
    assert stats.packed == stats.bytes == sum(map(len, files.values()))


def frame_json(obj: dict[str, Any]) -> tuple[bytes, bytes]:
    return b"J", json.dumps(obj).encode()


def hostile_streams() -> dict[str, tuple[list[tuple[bytes, bytes]], str]]:
    digest = hashlib.sha256(b"hostile").hexdigest()
    zeros_sha = hashlib.sha256(bytes(4096)).hexdigest()
    text = b"x = 1\n" * 1000
    return {
        "bomb": ([frame_json({"batch": [[digest, 4096]], "sha256": zeros_sha, "codec": "zlib"}),
                  (b"D", zlib.compress(bytes(64 << 20), 9))],
                 "protocol: zlib data inflates past its declared 4096 bytes"),
        "longer": ([frame_json({"blob": digest, "offset": 0, "size": 1000, "codec": "zlib"}),
                    (b"D", zlib.compress(text))], "protocol: zlib data inflates past its declared 1000 bytes"),
        "lzma-bomb": ([frame_json({"batch": [[digest, 4096]], "sha256": zeros_sha, "codec": "lzma"}),
                       (b"D", lzma.compress(bytes(64 << 20), format=lzma.FORMAT_XZ))],
                      "protocol: lzma data inflates past its declared 4096 bytes"),
        "garbage": ([frame_json({"blob": digest, "offset": 0, "size": 6000, "codec": "zlib"}),
                     (b"D", os.urandom(3000))], "protocol: zlib data is damaged"),
        "outside": ([frame_json({"batch": [["../../../tmp/escaped", len(text)]],
                                 "sha256": hashlib.sha256(text).hexdigest(), "codec": "zlib"}),
                     (b"D", zlib.compress(text))], "bad digest"),
    }


@pytest.mark.parametrize("case", sorted(hostile_streams()))
def test_a_hostile_compressed_stream_is_refused_by_the_helper(host: SshHost, tmp_path: Path, case: str) -> None:
    from mltrain.targets.ssh.link import Link, RemoteError

    frames, fragment = hostile_streams()[case]
    remote_dir = f"/root/hostile-z-{tmp_path.name}"
    link = Link(host.settings(remote_dir=remote_dir))
    try:
        with pytest.raises(RemoteError) as caught:
            link.request({"op": "put_blobs", "stream": True}, body=iter([*frames, frame_json({"end": True})]))
        assert link.call("ping").take("ok", bool)  # the helper that refused exited; a fresh one answers
    finally:
        link.close()
    message = str(caught.value)
    assert fragment in message and "\n" not in message, message
    placed = host.sh(f"find {remote_dir}/blobs -type f ! -name upload.lock")
    assert placed == ""  # no blob, no part of one
    assert host.sh("ls /tmp/escaped /escaped 2>&1 || true").count("No such file") == 2
