"""The end of a Ray job's log: where the job's own output stops and the frame of outputs and metrics begins.

The frame (written by ``jobwrap``) is hostile input: the job can print anything, the marker included.
So its size is bounded before it is decoded, its checksum checked, its gzip inflated in bounded
steps, and the tar inside goes through ``mltrain.util.archive`` (no write outside the run folder).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import zlib
from pathlib import Path

from mltrain.errors import TargetError

MAX_FRAME = 32 * 1024 * 1024  # bytes of compressed tar the job may hand back (jobwrap packs at most this raw)
CHUNK = 1 << 20


def visible(log: str, marker: str, *, ended: bool) -> str:
    """The part of ``log`` that is the job's own output.

    Up to the frame's first line when there is one; while the job runs, a tail that could be the start
    of the marker line is held back (it is shown once the job has ended, if no frame followed it).
    """
    start = log.find(f"\n{marker} ")
    if start >= 0:  # the wrapper starts the frame on a line of its own: its newline is not the job's
        return log[:start] if start == 0 or log[start - 1] == "\n" else log[:start + 1]
    if ended:
        return log
    head = f"\n{marker} "
    for keep in range(min(len(head), len(log)), 0, -1):
        if head.startswith(log[-keep:]):
            return log[:-keep]
    return log


def _header(log: str, marker: str) -> re.Match[str] | None:
    return re.search(rf"\n{re.escape(marker)} (\d{{1,12}}) ([0-9a-f]{{64}}) (\d{{1,3}})\n", log)


def exit_code(log: str, marker: str) -> int | None:
    """The script's exit code as the wrapper wrote it in the frame's header (None: no frame)."""
    header = _header(log, marker)
    return int(header.group(3)) if header is not None else None


def frame_bytes(log: str, marker: str) -> bytes | None:
    """The frame's gzip bytes, checked against its size and checksum; None if the job wrote no frame."""
    header = _header(log, marker)
    if header is None:
        return None
    size, digest = int(header.group(1)), header.group(2)
    if size > MAX_FRAME:
        raise TargetError(f"the job's outputs frame says {size} bytes, more than {MAX_FRAME}; not read")
    end = log.find(f"\n{marker} end\n", header.end() - 1)
    if end < 0:
        raise TargetError("the job's outputs frame is cut short (the job log ends inside it); outputs not returned")
    text = "".join(log[header.end():end + 1].split())
    if len(text) > (size + 2) // 3 * 4:
        raise TargetError("the job's outputs frame is longer than it says; outputs not returned")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TargetError("the job's outputs frame is not base64; outputs not returned") from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise TargetError("the job's outputs frame does not match its checksum; outputs not returned")
    return data


def extract(data: bytes, outputs: Path, metrics: Path) -> list[str]:
    """Inflate ``data`` (gzip) in bounded steps into the archive extractor; what it refused, as lines."""
    from mltrain.util.archive import Extractor, StreamStopped

    extractor = Extractor(folders={"run/outputs": outputs}, files={"run/metrics.jsonl": metrics})
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        pending = data
        while pending:
            extractor.feed(inflate.decompress(pending, CHUNK))
            pending = inflate.unconsumed_tail
        extractor.feed(inflate.flush())
    except StreamStopped:
        pass  # the report says why
    except zlib.error as exc:
        raise TargetError(f"the job's outputs frame is not gzip ({exc}); outputs not returned") from None
    finally:
        report = extractor.close()
    return report.lines()
