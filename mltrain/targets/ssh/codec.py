"""Compressing upload data for the host's helper: zstd when both ends have it, else zlib (and lzma while the
link is the bottleneck); raw when it won't shrink.

On a link of some tens of Mbit/s bytes on the wire decide an upload's time,
and source files compress about 4:1. The helper lists in its hello what the
host's Python can decompress (``codecs``: zlib always, zstd where it has a
module for it, lzma where its Python was built with it); the client takes the
best fast one it has too. A helper that lists none (protocol 1) gets raw
bytes, as before. Data that does not shrink (model weights, archives, random
bytes) is sent raw: a sample of each piece is tried first, so an
incompressible blob costs a few KiB of compressing, not all of it.

When the fast codec is zlib, lzma is the *strong* one: on the bench's source
text lzma -1 makes 8.7 MB of what zlib -3 makes 12.1 MB, at a fifth of the
speed (13 vs 67 MB/s a core). It is worth its CPU only while compressed
pieces are waiting for the link anyway; the upload decides that piece by
piece (``upload._Pace``). zstd -3 already gets lzma -1's size at zlib's
speed, so with zstd there is no strong codec.

zstd on this side: Python 3.14's ``compression.zstd``, its backport or
``pyzstd`` (the ``zstd`` extra), imported only when an upload asks for it
(the helper's ``zstd_module``: both ends look for the same modules).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

PREFERENCE = ("zstd", "zlib")
LEVEL = {"zstd": 3, "zlib": 3, "lzma": 1}  # zlib 3 on the bench's source text: 88 MB/s, 3.4:1; 6: 39 MB/s, 3.8:1
SAMPLE = 64 << 10
SHRINK = 0.9  # a sample that keeps more than this of its size is sent raw


@dataclass(frozen=True)
class Codecs:
    """What an upload may use: ``fast`` for every piece, ``strong`` for pieces that have time to spare."""

    fast: str
    strong: str | None = None


def choose(offered: list[str]) -> Codecs | None:
    """The best fast codec the helper offered that this side can make, and lzma beside zlib; None: send raw."""
    from mltrain.hosts.agent import lzma_module, zstd_module

    for name in PREFERENCE:
        if name in offered and (name == "zlib" or zstd_module() is not None):
            strong = "lzma" if name == "zlib" and "lzma" in offered and lzma_module() is not None else None
            return Codecs(name, strong)
    return None


def compress(codec: str, data: bytes | memoryview) -> bytes:
    """One whole stream of ``codec`` (the helper inflates each piece on its own, capped at its declared size)."""
    if codec == "zlib":
        return zlib.compress(data, LEVEL["zlib"])
    if codec == "lzma":
        import lzma  # xz container (the helper's decoder checks its memory limit); no check: sha256 covers it

        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, preset=LEVEL["lzma"])
    from mltrain.hosts.agent import zstd_module

    module = zstd_module()
    if module is None:
        raise RuntimeError("zstd was chosen but no zstd module can be imported")
    return bytes(module.compress(data, LEVEL["zstd"]))


def shrinks(data: bytes | memoryview) -> bool:
    """Whether a sample of ``data`` compresses (zlib 1: cheap, and tells text from random bytes as well)."""
    sample = data[:SAMPLE]
    return len(zlib.compress(sample, 1)) < SHRINK * len(sample)


def pack(codec: str | None, data: bytes) -> tuple[str | None, bytes]:
    """``data`` as it goes on the wire: compressed with ``codec`` if that shrinks it, else raw (codec None)."""
    if codec is None or not shrinks(data):
        return None, data
    packed = compress(codec, data)
    if len(packed) >= len(data):  # the sample lied (a compressible head on random bytes)
        return None, data
    return codec, packed
