"""Secrets a job prints become ``***`` before they reach its log.

Masking must happen in the process that writes the log: a detached run is
finalized by whichever process looks next, and only the launching one ever
holds the secret values (in memory). So this file is also a program, run by
the target's own Python (``python3 -I -S -c <this file> MODE ARGV...``: standard
library only, Python 3.8+, on this machine, an SSH host or inside a container;
isolated, so a ``select.py`` in the job's folder cannot stand in for ours)
as the parent of the job: the job's stdout+stderr go through a pipe to it and
come out masked on its own stdout, which is the run log (or the container's
output). It starts only for a run that has secrets; it exits with the job's
exit code (128+N for a job killed by signal N, as ``sh`` reports it), so the
wrapper records exactly what it did without it.

The values come in ``$MLTRAIN_MASK`` (base64 of the values joined by NUL),
which the job's environment does not keep; the job already had each value in
its own environment under its own name, so nothing new is exposed to it.

What is replaced: each value of 4 characters or more, each line of 4 or more
of a multi-line value, and the value's base64 (standard and URL-safe): the
padded encoding, and the three shifted fragments that appear when the value
sits inside a longer base64 text (it can start at any byte offset modulo 3;
only the characters that depend on the value's bits alone are matched, so at
most two characters at each end of such a fragment stay visible).

Streaming: output is passed on as soon as it arrives, except a tail that could
be the start of a secret (at most the longest pattern's length minus one);
that tail waits for the next bytes (or the end), so a secret split across two
writes is still masked, and ordinary output is not delayed.

Signals: ``wrap`` mode (under the sh wrapper) ignores TERM/INT/HUP, which reach
the job through its process group: it outlives the job to drain its output,
and exits at EOF. ``forward`` mode (PID 1's only child in a container, where
init signals just that child) passes them on to the job.
"""

from __future__ import annotations

import binascii
import os
import select
import sys
import time

try:
    signal = __import__("_signal")  # the C module: ``signal`` itself imports enum (~10 ms a start)
except ImportError:  # not CPython
    signal = __import__("signal")

ENV = "MLTRAIN_MASK"
MIN_LENGTH = 4  # shorter values are not masked: they would blank the log
REPLACEMENT = b"***"
CHUNK = 1 << 16
DRAIN_QUIET = 0.2  # after the job ended: stop once the pipe stays silent this long (a process it left holds it)
DRAIN_LIMIT = 2.0  # ... or after this many seconds of it


def encode_values(values: list[str]) -> str:
    """The ``$MLTRAIN_MASK`` value for ``values`` (env values hold no NUL, so NUL separates them)."""
    return _b64(b"\0".join(as_bytes(values))).decode("ascii")


def as_bytes(values: list[str]) -> list[bytes]:
    return [v.encode("utf-8", "surrogateescape") for v in values]


def decode_values(text: str) -> list[bytes]:
    return [v for v in binascii.a2b_base64(text).split(b"\0") if v] if text else []


def _b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False)  # not the base64 module: it imports re (~5-25 ms a start)


def _base64_forms(raw: bytes) -> list[bytes]:
    """The value's base64: padded, and the parts fixed by its bits alone at each of the three alignments."""
    forms = [_b64(raw)]
    bits = 8 * len(raw)
    for shift in range(3):
        encoded = _b64(b"\0" * shift + raw)
        start = -(-8 * shift // 6)  # the first character with no bit of the preceding bytes
        end = (8 * shift + bits) // 6  # past the last character with no bit of the following bytes
        forms.append(encoded[start:end])
    return forms + [f.replace(b"+", b"-").replace(b"/", b"_") for f in forms]


def patterns(values: list[bytes]) -> list[bytes]:
    """Everything to replace for ``values``, longest first (a longer match wins where several start)."""
    found: set[bytes] = set()
    for value in values:
        for raw in {value, value.strip()}:  # a value read from a file often ends in a newline its uses lack
            if len(raw.decode("utf-8", "surrogateescape")) < MIN_LENGTH:
                continue
            found.add(raw)
            found.update(line.rstrip(b"\r") for line in raw.split(b"\n"))
            found.update(_base64_forms(raw))
    kept = [p for p in found if len(p.decode("utf-8", "surrogateescape")) >= MIN_LENGTH]
    return sorted(kept, key=lambda p: (-len(p), p))


class Masker:
    """Replaces the patterns of some values in a byte stream fed in arbitrary chunks.

    ``feed`` returns what can be passed on now; ``flush`` the rest at the end.
    The result is the same however the stream is cut: the leftmost occurrence
    wins, and of those starting there the longest.
    """

    def __init__(self, values: list[bytes]) -> None:
        self.patterns = patterns(values)
        self.longest = len(self.patterns[0]) if self.patterns else 0
        self._by_head: dict[bytes, list[bytes]] = {}
        for pattern in self.patterns:
            self._by_head.setdefault(pattern[:4], []).append(pattern)
        self._held = b""

    def _hold_from(self, buf: bytes, pos: int) -> int:
        """The first index >= pos from which the rest of ``buf`` could still grow into a pattern.

        Only the last ``longest - 1`` bytes can. Places with 4 bytes or more left must show a pattern's
        first 4 bytes (every pattern has 4): ``bytes.find`` looks for those at C speed; only the last
        3 places are tried one by one. A Python loop over every byte would cap the throughput.
        """
        end = len(buf)
        window = max(pos, end - self.longest + 1)
        best = end
        for head, candidates in self._by_head.items():
            i = buf.find(head, window, best)
            while i >= 0:
                tail = buf[i:]
                if any(len(p) > len(tail) and p.startswith(tail) for p in candidates):
                    best = i
                    break
                i = buf.find(head, i + 1, best)
        for i in range(max(window, end - 3), best):
            tail = buf[i:]
            if any(p.startswith(tail) for p in self.patterns):
                return i
        return best

    def _replace(self, buf: bytes, pos: int, stop: int, out: list[bytes]) -> tuple[int, int]:
        """Mask the occurrences in ``buf`` that start before ``stop``, from ``pos`` on.

        Returns where the unmasked rest begins and the (possibly moved) ``stop``: a complete match may
        run past it, and then what could still grow into a pattern is looked for behind that match.
        """
        next_at = {p: buf.find(p, pos) for p in self.patterns}
        while True:
            best, start = b"", -1
            for pattern in self.patterns:
                at = next_at[pattern]
                if 0 <= at < pos:
                    at = next_at[pattern] = buf.find(pattern, pos)
                if at >= 0 and (start < 0 or at < start):  # a tie keeps the earlier, longer, pattern
                    best, start = pattern, at
            if start < 0 or start >= stop:
                return pos, stop
            out += [buf[pos:start], REPLACEMENT]
            pos = start + len(best)
            if pos > stop:
                stop = self._hold_from(buf, pos)

    def feed(self, data: bytes) -> bytes:
        if not self.patterns:
            return data
        buf = self._held + data
        out: list[bytes] = []
        pos, hold = self._replace(buf, 0, self._hold_from(buf, 0), out)
        out.append(buf[pos:hold])
        self._held = buf[hold:]
        return b"".join(out)

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return self.mask(held)

    def mask(self, data: bytes) -> bytes:
        """A whole text at once (the held tail of a stream is not involved)."""
        if not self.patterns:
            return data
        out: list[bytes] = []
        pos, _ = self._replace(data, 0, len(data), out)
        out.append(data[pos:])
        return b"".join(out)


def mask_text(text: str, values: list[str]) -> str:
    """``text`` with ``values`` masked: for what mltrain itself writes beside the job's output."""
    masker = Masker(as_bytes(values))
    return masker.mask(text.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _spawn(argv: list[str], output: int) -> int:
    """Start ``argv`` with stdout and stderr on ``output``, the signal state sh would give it; its pid.

    Not ``os.posix_spawn``: glibc's leaves its two internal signals ignored in the child, and an
    ignored signal stays ignored across exec. Not ``subprocess``: importing it costs ~20 ms a run.
    A failed exec comes back as the OSError it was, through a close-on-exec pipe.
    """
    err_read, err_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only async-safe steps and the exec
        try:
            os.close(err_read)
            os.dup2(output, 1)
            os.dup2(output, 2)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; the job must not
                signal.signal(sig, signal.SIG_DFL)
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(err_write, str(exc.errno or 0).encode())
        finally:
            os._exit(127)
    os.close(err_write)
    with open(err_read, "rb") as errors:
        failed = errors.read()
    if failed:
        os.waitpid(pid, 0)
        code = int(failed)
        raise OSError(code, os.strerror(code))
    return pid


def run(mode: str, argv: list[str]) -> int:
    """Start ``argv`` with its output through the masker onto our stdout; its exit code, as sh gives it."""
    masker = Masker(decode_values(os.environ.pop(ENV, "")))
    child: list[int] = []
    pending: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        if mode != "forward":
            return  # the job's process group got it too
        if not child:
            pending.append(signum)  # not started yet (or already reaped: then nothing is sent)
            return
        try:
            os.kill(child[0], signum)
        except OSError:
            return  # it has ended already

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)  # a handler, not SIG_IGN: an exec resets handlers, not ignores
    read_end, write_end = os.pipe()  # both close-on-exec; the dup2 copies are not
    try:
        pid = _spawn(argv, write_end)
    except OSError as exc:
        sys.stderr.write(f"mltrain: cannot run {argv[0]}: {exc.strerror}\n")
        return 127 if isinstance(exc, FileNotFoundError) else 126
    finally:
        os.close(write_end)
    child.append(pid)
    for signum in pending:
        on_signal(signum, None)

    broken = False

    def write(data: bytes) -> None:
        nonlocal broken
        while data and not broken:
            try:
                data = data[os.write(1, data):]
            except OSError:  # the log cannot take it: keep draining, so the job never blocks on a full pipe
                broken = True

    status: int | None = None
    drain_until = 0.0
    while True:
        ready = select.select([read_end], [], [], DRAIN_QUIET if status is not None else 0.5)[0]
        if ready:
            data = os.read(read_end, CHUNK)
            if not data:
                break
            write(masker.feed(data))
            if status is not None and time.monotonic() > drain_until:
                break
            continue
        if status is not None:
            break  # quiet since the job ended: whatever still holds the pipe is not the job
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            child.clear()  # reaped: its pid may be anyone's now, so no signal goes there
            status, drain_until = code, time.monotonic() + DRAIN_LIMIT
    write(masker.flush())
    os.close(read_end)
    if status is None:
        status = os.waitpid(pid, 0)[1]
    return _exit_code(status)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
