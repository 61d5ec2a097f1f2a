"""The helper mltrain runs on a remote host, one process per SSH connection (stdlib only, Python >= 3.8).

Why a helper instead of a shell command per step: each exec channel starts
the user's login shell (~80 ms on a host whose ``.bashrc`` runs pyenv), and
submitting a run takes a dozen small steps. One long-lived process answers
each step in about a millisecond, gives every reply a deadline the client
can enforce, and takes argv and environment as data -- nothing it is given
ever passes through a shell.

Its job steps (``Jobs``: launch, poll, wait, read the log, cancel) are also
what compute=local runs, in the client's own process
(``mltrain.hosts.local``): the lifecycle of a detached job is written here,
once, for every host.

Wire format, both ways: frames of ``kind (1 byte) + length (4 bytes, big
endian) + payload``. ``J`` frames hold one JSON object (a request, a reply,
or ``{"hb": 1}``, a heartbeat sent while a long step is busy, so a silent
link can be told from a slow step); ``D``/``E`` frames hold raw bytes
(file content, a command's stdout/stderr; in an upload, a batch or chunk
whose header names a ``codec`` is one compressed stream, inflated capped at
its declared size: ``inflate``). A reply with ``"error"`` ends
the step; ``"fatal": true`` means the helper exits after sending it.

``BOOT`` (run as ``python3 -I -S -c BOOT <remote_dir> <sha256> <beat>``)
starts the helper. A copy is kept on the host, in ``~/.cache/mltrain-agent/``:
a ``0700`` folder of the user's own, outside ``remote_dir`` (where jobs run
and write), named in no job's environment. A job runs as the same user, so
it *could* still rewrite that copy: BOOT therefore runs only bytes whose full
sha256 is the one the client sent (reading the copy once, hashing it,
compiling those same bytes -- no ``__pycache__``, no import from a folder a
job can write, ``-I`` keeps the home folder off ``sys.path``); on a mismatch
it asks the client for the source, checks that too, and keeps it again.
Compiling on every start costs ~8 ms (measured here, start to hello: 19 -> 27 ms).
A folder with looser modes is set back to ``0700``; one that is not a folder
of the user's own is not used (the helper is then sent every time).

Layout under ``remote_dir`` (``~/.mltrain``)::

    blobs/ab/cdef...      file contents by blake3 digest, read-only (as in the local store)
    blobs/manifests/<id>  marker: the manifest blob <id> and every blob it lists are here
    blobs/tmp/<digest>.part  a large blob being received (kept when the link drops: the next upload resumes
                          it); small ones are written as unnamed files (O_TMPFILE) and linked in whole
    checkouts/<id>/       a snapshot's tree, built from hardlinks to the blobs
    cache/envs/           environments built on this host (venvs)
    runs/<run id>/        output.log, exit_code, launch.json (+ launch.lock), outputs/, metrics.jsonl
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib

TYPE_CHECKING = False  # typing costs ~10 ms of every start on the host; mypy reads this name as true
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import IO, Any

HEAD = struct.Struct(">cI")
CHUNK = 1 << 20
BLOB_MODE = 0o444
EXEC_MODE = 0o755
PROTOCOL = 2  # 2: the hello lists the codecs this host's Python can decompress (upload data may come compressed)
COPY_INSTEAD = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EACCES)
BOOT_ID = "/proc/sys/kernel/random/boot_id"
HEX = frozenset("0123456789abcdef")
MAX_BATCH = 8 << 20  # the most a compressed batch may declare (the client's are about a MiB): bounds its inflating
MAX_MANIFEST = 256 << 20  # a manifest sent whole (200,000 files: ~30 MB)
DIRENT = 80  # bytes a blob's name takes in a directory (ext4: 8 + 62, rounded up)
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ from Python 3.10 on, Linux only

# Which steps may send heartbeats while they wait (a lock, a child): the client takes a heartbeat during any
# other step as a broken protocol (a host sending them forever would hold the client forever).
BEATING = frozenset({"lock", "launch", "put_manifest", "begin_upload", "put_blobs", "run", "cancel", "wait"})

# Started with ``-I -S``: no site, no PYTHON* variables, no home folder on sys.path (a job could plant a
# ``json.py`` there). See the module docstring for why the kept copy is hashed before every start.
BOOT = r"""
import hashlib, json, os, stat, struct, sys
d = sys.argv[2]; n = "agent_" + d[:16] + ".py"; a = os.path.join(os.path.expanduser("~"), ".cache", "mltrain-agent")
out, inp = sys.stdout.buffer, sys.stdin.buffer
def say(o):
    b = json.dumps(o).encode(); out.write(b"J" + struct.pack(">I", len(b)) + b); out.flush()
def folder():
    try:
        os.makedirs(a, 0o700, exist_ok=True)
        fd = os.open(a, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        return None, "cannot use %s as its folder (%s)" % (a, e.strerror)
    s = os.fstat(fd)
    if s.st_uid != os.getuid():
        os.close(fd)
        return None, "%s belongs to uid %d, not to you: remove it" % (a, s.st_uid)
    if s.st_mode & 0o077:
        os.fchmod(fd, 0o700)
    return fd, None
def kept(fd):
    try:
        f = os.open(n, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError:
        return None
    with open(f, "rb") as fh:
        src = fh.read(1 << 22) if stat.S_ISREG(os.fstat(f).st_mode) else b""
    return src if hashlib.sha256(src).hexdigest() == d else None
def keep(fd, src):
    t = "%s.%d.tmp" % (n, os.getpid())
    try:
        try:
            os.unlink(t, dir_fd=fd)
        except FileNotFoundError:
            pass
        with open(os.open(t, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd), "wb") as fh:
            fh.write(src)
        os.replace(t, n, src_dir_fd=fd, dst_dir_fd=fd)
    except OSError:
        pass
fd, why = folder()
src = kept(fd) if fd is not None else None
if src is None:
    say(dict(need="agent", uncached=why) if why else dict(need="agent"))
    k, size = struct.unpack(">cI", inp.read(5)); src = inp.read(size)
    if hashlib.sha256(src).hexdigest() != d:
        say(dict(error="the helper's source arrived damaged (sha256 mismatch)")); sys.exit(1)
    if fd is not None:
        keep(fd, src)
if fd is not None:
    os.close(fd)
m = type(sys)("mltrain_agent"); m.__file__ = os.path.join(a, n); sys.modules[m.__name__] = m
sys.argv = [m.__file__] + sys.argv[1:]
exec(compile(src, m.__file__, "exec"), m.__dict__)
m.main()
"""


class Fatal(Exception):
    """Stop the helper after replying (the stream it was reading is no longer in step)."""


class Wire:
    def __init__(self, rfile: IO[bytes], wfile: IO[bytes]) -> None:
        self.rfile = rfile
        self.wfile = wfile

    def send(self, kind: bytes, payload: bytes) -> None:
        self.wfile.write(HEAD.pack(kind, len(payload)))
        self.wfile.write(payload)

    def reply(self, obj: dict[str, Any]) -> None:
        self.send(b"J", json.dumps(obj).encode())
        self.wfile.flush()

    def heartbeat(self) -> None:
        self.reply({"hb": 1})

    def recv(self) -> tuple[bytes, bytes]:
        head = self.rfile.read(HEAD.size)
        if len(head) < HEAD.size:
            raise EOFError
        kind, size = HEAD.unpack(head)
        payload = self.rfile.read(size)
        if len(payload) < size:
            raise EOFError
        return kind, payload

    def recv_json(self) -> dict[str, Any]:
        return json_frame(*self.recv())


def json_frame(kind: bytes, payload: bytes) -> dict[str, Any]:
    if kind != b"J":
        raise Fatal("protocol: expected a JSON frame")
    obj: dict[str, Any] = json.loads(payload)
    return obj


def zstd_module() -> Any:
    """Python 3.14's ``compression.zstd``, else its backport or ``pyzstd`` (same decompressor API), else None."""
    import importlib

    for name in ("compression.zstd", "backports.zstd", "pyzstd"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def lzma_module() -> Any:
    """The stdlib's ``lzma``, or None on a Python built without liblzma."""
    try:
        import lzma
    except ImportError:
        return None
    return lzma


LZMA_MEMLIMIT = 64 << 20  # an xz stream asking for a larger dictionary than this is refused, not allocated


def codecs() -> list[str]:
    """What this host can decompress: zstd if its Python has a module for it, zlib always, lzma where built in."""
    return (["zstd"] if zstd_module() is not None else []) + ["zlib"] + (["lzma"] if lzma_module() else [])


def _decoder(codec: Any) -> Any:
    """A fresh decompressor for one stream of ``codec``, or None when this host did not offer it."""
    if codec == "zlib":
        return zlib.decompressobj()
    if codec == "zstd":
        module = zstd_module()
        return module.ZstdDecompressor() if module is not None else None
    if codec == "lzma":
        module = lzma_module()
        return module.LZMADecompressor(module.FORMAT_XZ, memlimit=LZMA_MEMLIMIT) if module is not None else None
    return None


def inflate(codec: Any, data: bytes, size: int) -> bytes:
    """``data`` decompressed, which must be exactly ``size`` bytes (its declared size).

    Never more than ``size + 1`` bytes are made, whatever the stream says (a
    decompression bomb stops there), and a stream that ends short, runs on,
    or has bytes after its end is refused: the sender is broken or hostile.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise Fatal("protocol: compressed data without a positive declared size")
    decoder = _decoder(codec)
    if decoder is None:
        raise Fatal(f"protocol: codec {str(codec)[:20]!r} is not one this host offered")
    try:
        out = decoder.decompress(data, size + 1)
    except Exception as exc:  # zlib.error, ZstdError, LZMAError (memlimit too): not a stream of that codec
        raise Fatal(f"protocol: {codec} data is damaged ({exc})") from None
    if len(out) > size:
        raise Fatal(f"protocol: {codec} data inflates past its declared {size} bytes")
    if not decoder.eof or len(out) < size:
        raise Fatal(f"protocol: {codec} data ends short of its declared {size} bytes")
    if decoder.unused_data or getattr(decoder, "unconsumed_tail", b""):
        raise Fatal(f"protocol: bytes after the end of the {codec} data")
    return bytes(out)


def blob_left(head: dict[str, Any]) -> int:
    """How many bytes of a large blob its header says are still to come."""
    try:
        return int(head["size"]) - int(head.get("offset") or 0)
    except (KeyError, TypeError, ValueError):
        raise Fatal("protocol: a blob header without its size and offset") from None


def batch_size(rows: Any) -> int:
    """What a compressed batch's header declares in all, refused past ``MAX_BATCH`` or malformed."""
    try:
        total = sum(int(row[1]) for row in rows)
    except (TypeError, ValueError, IndexError):
        raise Fatal("protocol: a batch header without sizes") from None
    if total > MAX_BATCH:
        raise Fatal(f"protocol: a compressed batch declares {total} bytes, more than {MAX_BATCH}")
    return total


class Prefetch:
    """The frames of one upload stream, read and hashed by a thread a few MiB ahead of the one writing them.

    Reading stdin while the blobs are written keeps sshd (and so the client)
    sending; hashing there too leaves the writer only the writes (sha256 of
    440 MB is ~0.35 s of CPU, and writing into fresh page cache is the
    slowest step here). The thread stops after the stream's ``{"end": true}``,
    so the next request is read as usual.

    Each frame comes with what the reader made of it: a JSON frame's object;
    for a batch's data, the sha256 of all of it (None if its size does
    not match the header); for a large blob's trailer, the sha256 of the
    bytes that came for it (None when it resumed a part: those bytes are
    hashed by the writer, from the part).
    """

    def __init__(self, wire: Wire, depth: int = 16) -> None:
        import queue
        import threading

        self.wire = wire
        self.frames: queue.Queue[Any] = queue.Queue(depth)
        threading.Thread(target=self._read, name="mltrain-upload-reader", daemon=True).start()

    def _read(self) -> None:
        batch: list[Any] | None = None
        hasher: Any = None
        codec: Any = None  # the codec of the batch or large blob being received (None: raw bytes)
        left = 0  # bytes of the large blob still to come
        try:
            while True:
                kind, payload = self.wire.recv()
                seen: Any = None
                if kind == b"J":
                    seen = json.loads(payload)
                    if "batch" in seen:
                        batch = seen["batch"]
                        codec = seen.get("codec")
                    elif "blob" in seen:
                        hasher = hashlib.sha256() if not seen.get("offset") else None
                        codec = seen.get("codec")
                        left = blob_left(seen)
                    elif "sha256" in seen:
                        seen = dict(seen, received=hasher.hexdigest() if hasher is not None else None)
                        hasher = codec = None
                elif batch is not None:
                    if codec is not None:
                        payload = inflate(codec, payload, batch_size(batch))
                    seen = batch_sha256(payload, batch)
                    batch = codec = None
                else:
                    if codec is not None:  # each chunk of a large blob is its own stream of min(CHUNK, left) bytes
                        payload = inflate(codec, payload, min(CHUNK, left))
                    left -= len(payload)
                    if hasher is not None:
                        hasher.update(payload)
                self.frames.put((kind, payload, seen))
                if kind == b"J" and seen.get("end"):
                    return
        except BaseException as exc:  # EOFError (the link dropped) included: the reader raises it
            self.frames.put(exc)

    def idle(self) -> bool:
        """Whether no frame is waiting (the link is what the helper waits for)."""
        return self.frames.empty()

    def recv_seen(self) -> tuple[bytes, bytes, Any]:
        item = self.frames.get()
        if isinstance(item, BaseException):
            raise item
        kind, payload, seen = item
        return kind, payload, seen

    def recv(self) -> tuple[bytes, bytes]:
        kind, payload, _ = self.recv_seen()
        return kind, payload

    def recv_json(self) -> dict[str, Any]:
        kind, _, seen = self.recv_seen()
        if kind != b"J":
            raise Fatal("protocol: expected a JSON frame")
        obj: dict[str, Any] = seen
        return obj


def batch_sha256(data: bytes, rows: list[Any]) -> str | None:
    """The sha256 of a batch's data (None: its length is not what the header's sizes add up to)."""
    if len(data) != sum(int(r[1]) for r in rows):
        return None
    return hashlib.sha256(data).hexdigest()


class Prebuild:
    """A checkout built while its blobs arrive: each file is linked once its blob is placed, while the helper
    would otherwise wait for the link.

    A first upload's 10,000 links cost ~0.3 s on a small VM once the last
    byte is in; made while a slow link keeps the helper waiting they cost
    nothing after it. Only while it waits, though: on loopback the stream
    keeps every core busy, and linking from the writer threads there slowed
    the upload by more than it saved (``link_while``). Only a whole build is
    kept (``finish``: the manifest stored, its marker written, the folder
    renamed into place, as ``put_manifest`` does); anything else -- a blob
    that never came, an error making an entry -- leaves no trace, and the
    client's ``put_manifest`` builds the checkout as before.
    """

    def __init__(self, agent: Agent, manifest_id: str, canonical: bytes, entries: list[Any]) -> None:
        import collections

        self.agent = agent
        self.manifest_id = manifest_id
        self.canonical = canonical
        self.failed = False
        self.folders: set[bytes] = set()
        self.tmp = agent.checkout_tmp(manifest_id)
        self.top = os.fsencode(self.tmp)
        self.waiting: dict[str, list[Any]] = {}
        self.ready: collections.deque[str] = collections.deque()  # placed, not yet linked (deques are thread-safe)
        for item in entries:
            if item[4] is None and item[2] > 0:
                agent.blob_path(item[3])  # a digest, or the helper stops before anything is made
                self.waiting.setdefault(item[3], []).append(item)
            else:
                self._make(self.top, [item])
        self.ready.extend(agent.present(list(self.waiting)))

    def _make(self, top: bytes, items: list[Any]) -> None:
        try:
            for item in items:
                self.agent._make(top, item, self.folders)
        except Exception:  # OSError, or Fatal for a link that leaves the tree: put_manifest will say so
            self.failed = True

    def placed(self, digest: str) -> None:
        """Called from the writer threads: linked later, by the main thread (``link_while``, ``finish``)."""
        self.ready.append(digest)

    def link_while(self, idle: Callable[[], bool]) -> None:
        """Link placed blobs' files while ``idle()`` says nothing else is waiting to be done."""
        while self.ready and not self.failed and idle():
            self._make(self.top, self.waiting.pop(self.ready.popleft(), []))

    def finish(self) -> str | None:
        """The checkout's path once it is whole and in place; None (and nothing left) otherwise."""
        self.link_while(lambda: True)
        final = os.path.join(self.agent.root, "checkouts", self.manifest_id)
        if self.failed or self.waiting:
            self.abandon()
            return None
        try:
            self.agent.store_manifest(self.manifest_id, self.canonical)
            os.rename(self.tmp, final)
        except OSError:
            self.abandon()
            return final if os.path.isdir(final) else None  # made meanwhile by another upload
        return final

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class Writers:
    """Two threads that write blobs while the main thread hands out the next ones.

    Filling fresh page cache is the slowest step of an upload on a VM (1.3 s
    for 400 MB in one thread here when the host has to back new guest
    memory, 0.7 s in two); the writes release the GIL, so two threads keep
    both cores filling it. ``wait`` returns once every job handed out so far
    is done, and raises the first one's error: a blob is renamed into place
    only after its writes are waited for, and a file is closed only then.
    """

    def __init__(self, count: int = 2, depth: int = 8) -> None:
        import queue
        import threading

        self.jobs: queue.Queue[Any] = queue.Queue(depth)
        self.failed: list[BaseException] = []
        self.threads = [threading.Thread(target=self._work, name="mltrain-writer", daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                if not self.failed:
                    job[0](*job[1:])
            except BaseException as exc:
                self.failed.append(exc)
            finally:
                self.jobs.task_done()

    def submit(self, *job: Any) -> None:
        if self.failed:
            self.wait()
        self.jobs.put(job)

    def wait(self) -> None:
        self.jobs.join()
        if self.failed:
            raise self.failed[0]

    def close(self) -> None:
        """Wait for what was handed out (errors dropped: the caller is already failing or has waited), then stop."""
        self.jobs.join()
        for _ in self.threads:
            self.jobs.put(None)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def boot_id() -> str:
    try:
        with open(os.environ.get("MLTRAIN_BOOT_ID_FILE") or BOOT_ID) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (a recycled pid has another), None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return None
    return fields[19].decode()


def reap() -> None:
    """Collect finished children (a run this helper started leaves a zombie until reaped)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def kill_group(pgid: int) -> None:
    """SIGKILL a process group of ours; gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def temp_name(path: str) -> str:
    """A name beside ``path`` that no other process or thread writing ``path`` at the same time uses."""
    return f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` whole: a reader sees the old bytes or the new; concurrent writers each use their own temp."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temp_name(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def clean_name(raw: Any) -> bytes:
    """A manifest row's name as bytes, refused unless it is a clean relative path."""
    name = bytes.fromhex(raw["hex"]) if isinstance(raw, dict) else str(raw).encode("utf-8", "surrogateescape")
    parts = name.split(b"/")
    if not name or name.startswith(b"/") or b"\0" in name or any(p in (b"", b".", b"..") for p in parts):
        raise Fatal(f"manifest holds an unsafe path {name!r}")
    return name


def entry(row: list[Any]) -> tuple[bytes, int, int, str, bytes | None]:
    """A manifest row (path, mode, size, digest[, link]) with its names checked."""
    return clean_name(row[0]), int(row[1]), int(row[2]), str(row[3]), clean_name(row[4]) if len(row) == 5 else None


def link_inside(path: bytes, target: bytes) -> bool:
    if not target or target.startswith(b"/") or b"\0" in target:
        return False
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return resolved != b".." and not resolved.startswith(b"../")


# -------------------------------------------------------------------- jobs
# The lifecycle of a detached job, written once: this helper runs it on an SSH host (the ``op_`` steps below), and
# ``mltrain.hosts.local.LocalHost`` runs it in the client's own process for compute=local.
LAUNCH_RECORD = "launch.json"
EXIT_FILE = "exit_code"
LOG_FILE = "output.log"


def exit_code(folder: str) -> int | str | None:
    """The code the wrapper wrote (``"unreadable"`` if it is not a number), None while there is none."""
    try:
        with open(os.path.join(folder, EXIT_FILE)) as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.lstrip("-").isdigit() else "unreadable"


def launch_record(folder: str) -> dict[str, Any] | None:
    """What the launch wrote down (pid, start time, boot id), None if nothing was launched there."""
    try:
        with open(os.path.join(folder, LAUNCH_RECORD)) as fh:
            info: dict[str, Any] = json.load(fh)
    except FileNotFoundError:
        return None
    return info


def flock_waiting(fd: int, tick: Callable[[], None]) -> None:
    """An exclusive ``flock`` on ``fd``, waited for with ``tick`` called while it is held elsewhere."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.05)
            tick()


def _no_tick() -> None:
    pass


class Jobs:
    """Detached jobs on this machine, one per run folder: launch, poll, wait, read the log, cancel.

    A job is started under the sh wrapper (the caller wraps its argv) in a
    session and process group of its own, so it outlives whoever started it;
    ``launch.json`` records its pid, the kernel's start time of that pid and
    the boot id, which is how any later process tells the job's process from
    a recycled pid and a running job from one the host's restart ended.

    ``reap_all``: this process exists to run jobs (the helper), so it may
    reap any child; in a client's process only the children it started here
    are reaped, by their ``Popen``, never another thread's subprocess.
    ``tick`` is called at least every ``tick_every`` seconds while a step
    waits (the helper sends its heartbeats from there).
    """

    def __init__(self, *, reap_all: bool, tick: Callable[[], None] = _no_tick, tick_every: float = 1.0) -> None:
        self.reap_all = reap_all
        self.tick = tick
        self.tick_every = tick_every
        self.children: dict[int, Any] = {}  # pid -> Popen of jobs started by this process, until reaped
        self.records: dict[str, dict[str, Any]] = {}  # launch records read (written once, never changed)

    def record(self, folder: str) -> dict[str, Any] | None:
        info = self.records.get(folder)
        if info is None:
            info = launch_record(folder)
            if info is not None:
                self.records[folder] = info
        return info

    # ---------------------------------------------------------------- launch
    def launch(self, folder: str, argv: list[str], cwd: str, env: dict[str, str], *, touch: Sequence[str] = (),
               container: str | None = None, guard: Any = None) -> dict[str, Any]:
        """Start ``argv`` detached in ``cwd``, once per run folder; a later call returns the first launch's record.

        Launches of one run are serialised by an ``flock`` on its ``launch.lock``
        (a file: NFS locks only what is open for writing), so a launch retried
        while the first one is still starting (a dropped link) waits for it and
        finds its record. ``guard`` (a context manager) is held while the job
        starts. ``{"missing_code": true}`` if ``cwd`` is not there.
        """
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, "launch.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            flock_waiting(fd, self.tick)
            known = self.record(folder)
            if known is not None:
                return dict(known, again=True)
            os.makedirs(os.path.join(folder, "outputs"), exist_ok=True)
            for name in touch:
                open(os.path.join(folder, os.path.basename(name)), "ab").close()
            with guard if guard is not None else contextlib.nullcontext():
                if not os.path.isdir(cwd):
                    return {"missing_code": True}
                full_env = dict(os.environ)
                full_env.update(env)
                proc = subprocess.Popen(argv, cwd=cwd, env=full_env, start_new_session=True, close_fds=True,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            if not self.reap_all:
                self.children[proc.pid] = proc
            info: dict[str, Any] = {"pid": proc.pid, "start_time": start_time(proc.pid), "boot_id": boot_id(),
                                    "run_dir": folder}
            if container:
                info["container"] = container
            write_atomic(os.path.join(folder, LAUNCH_RECORD), json.dumps(info).encode())
            self.records[folder] = info
            return info
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ state
    def _reap(self, pid: int) -> None:
        if self.reap_all:
            reap()
            return
        child = self.children.get(pid)
        if child is not None and child.poll() is not None:
            self.children.pop(pid, None)

    def _running(self, info: dict[str, Any]) -> bool:
        """The record's process is alive: same boot, same pid, same start time (a zombie is not alive)."""
        if info.get("boot_id") and info["boot_id"] != boot_id():
            return False
        pid = int(info["pid"])
        self._reap(pid)
        current = start_time(pid)
        return current is not None and current == info.get("start_time")

    def poll(self, folder: str) -> dict[str, Any]:
        """``{"exit_code": n}`` once it ended, else ``{"state": running | rebooted | vanished | unknown}``."""
        code = exit_code(folder)
        if code is not None:
            return {"exit_code": code}
        info = self.record(folder)
        if info is None:
            return {"state": "unknown"}
        if info.get("boot_id") and info["boot_id"] != boot_id():
            return {"state": "rebooted"}
        if self._running(info):
            return {"state": "running"}
        code = exit_code(folder)  # it may have written the file just now
        return {"exit_code": code} if code is not None else {"state": "vanished"}

    def _leader_ended(self, info: dict[str, Any], timeout: float) -> bool | None:
        """Block until the job's process ends (True) or ``timeout`` passes (False), woken by the end itself.

        A pidfd becomes readable the moment the process exits (sleeping in
        between costs a sweep of short trials up to 50 ms each); opened first,
        then checked to be the job's process, so a recycled pid is never
        waited for. None where there are no pidfds (Python < 3.9, Linux < 5.3).
        """
        pid = int(info["pid"])
        try:
            fd = os.pidfd_open(pid)
        except AttributeError:
            return None
        except OSError as exc:
            return None if exc.errno in (errno.ENOSYS, errno.EPERM) else True  # ESRCH: gone already
        try:
            child = self.children.get(pid)
            if child is None and start_time(pid) != info.get("start_time"):
                return True  # not the job's process (or a zombie): it has ended
            poller = select.poll()  # not select.select: it fails for fds >= 1024, which a large sweep reaches
            poller.register(fd, select.POLLIN)
            deadline = time.monotonic() + max(0.0, timeout)
            while True:
                left = deadline - time.monotonic()
                if poller.poll(max(0.0, min(left, self.tick_every)) * 1000):
                    if child is not None:
                        child.wait()
                        self.children.pop(pid, None)
                    return True
                if left <= self.tick_every:
                    return False
                self.tick()
        finally:
            os.close(fd)

    def wait(self, folder: str, timeout: float) -> dict[str, Any]:
        """``poll``'s answer once the job has ended, or after ``timeout`` seconds."""
        info = self.record(folder)
        if info is None or exit_code(folder) is not None:
            return self.poll(folder)
        ended = self._leader_ended(info, timeout)
        if ended is False:  # the job's own process is still there (no need to look again)
            return {"state": "running"}
        if ended:
            return self.poll(folder)
        deadline = time.monotonic() + timeout
        beat = time.monotonic() + self.tick_every
        while True:
            state = self.poll(folder)
            now = time.monotonic()
            if state.get("state") != "running" or now >= deadline:
                return state
            time.sleep(min(0.05, deadline - now))
            if now > beat:
                self.tick()
                beat = now + self.tick_every

    def read_log(self, folder: str, offset: int, limit: int) -> bytes:
        try:
            with open(os.path.join(folder, LOG_FILE), "rb") as fh:
                fh.seek(max(0, offset))
                return fh.read(max(0, limit))
        except FileNotFoundError:
            return b""

    # ----------------------------------------------------------------- cancel
    def _group_alive(self, pgid: int) -> bool:
        self._reap(pgid)  # a zombie leader still counts for killpg
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def cancel(self, folder: str, grace: float, container: str | None = None) -> dict[str, Any]:
        """TERM the job's process group, wait up to ``grace`` seconds for all of it to end, then KILL the group.

        Nothing is signalled unless the record's process is still the job's
        (pid + start time + boot id). ``container`` (or the one the launch
        recorded) is removed afterwards: a container the job ran outlives a
        killed ``docker run`` client.
        """
        info = self.record(folder)
        if info is None or not self._running(info):
            return {"signalled": False}
        pid = int(info["pid"])
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return {"signalled": False}
        deadline = time.monotonic() + grace
        leader = True  # the job's own process may still end: wait on it, then on the rest of its group
        beat = time.monotonic() + self.tick_every
        while self._group_alive(pid):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if leader:
                ended = self._leader_ended(info, min(0.05, left))
                if ended is None:
                    time.sleep(min(0.05, left))
                leader = ended is False
            else:
                time.sleep(min(0.05, left))
            if time.monotonic() > beat:
                self.tick()
                beat = time.monotonic() + self.tick_every
        killed = False
        if self._group_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)  # the group, stragglers included
                killed = True
            except ProcessLookupError:
                pass
        container = container or info.get("container")
        if container:
            subprocess.call(["docker", "rm", "-f", str(container)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._reap(pid)
        return {"signalled": True, "killed": killed}

    def release(self, folder: str) -> None:
        """Reap the job's process if this process started it and it has ended."""
        info = self.records.get(folder)
        if info is not None:
            self._reap(int(info["pid"]))


class Agent:
    def __init__(self, root: str, wire: Wire, heartbeat: float) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.blobs = os.path.join(self.root, "blobs")
        self.wire = wire
        self.heartbeat = heartbeat
        self.locks: dict[str, int] = {}
        self.upload_lock: int | None = None
        self.known: set[str] = set()
        self.tmpfile = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._blobs_fd: int | None = None
        self.beat_at = time.monotonic() + heartbeat
        self.jobs = Jobs(reap_all=True, tick=self._tick, tick_every=heartbeat)

    # ------------------------------------------------------------ plumbing
    def serve(self) -> None:
        while True:
            try:
                msg = self.wire.recv_json()
            except EOFError:
                return
            op = getattr(self, "op_" + str(msg.get("op")), None)
            self.beat_at = time.monotonic() + self.heartbeat
            try:
                if op is None:
                    raise Fatal("unknown operation {!r}".format(msg.get("op")))
                reply = op(msg)
            except Fatal as exc:
                self.wire.reply({"error": str(exc), "fatal": True})
                return
            except OSError as exc:
                fatal = bool(msg.get("stream"))
                self.wire.reply({"error": "{}: {}".format(exc.filename or msg.get("op"), exc.strerror or exc),
                                 "errno": exc.errno, "fatal": fatal})
                if fatal:
                    return
                continue
            except EOFError:
                return
            if reply is not None:
                self.wire.reply(reply)

    def blob_path(self, digest: str) -> str:
        if len(digest) != 64 or not HEX.issuperset(digest):
            raise Fatal(f"bad digest {digest!r}")
        return os.path.join(self.blobs, digest[:2], digest[2:])

    def run_dir(self, run_id: str) -> str:
        if not run_id or not all(c.isalnum() or c in "-_" for c in run_id):
            raise Fatal(f"bad run id {run_id!r}")
        return os.path.join(self.root, "runs", run_id)

    # ------------------------------------------------------------ the host
    def op_hello(self, msg: dict[str, Any]) -> dict[str, Any]:
        os.makedirs(self.root, exist_ok=True)
        return {"protocol": PROTOCOL, "root": self.root, "home": os.path.expanduser("~"), "uid": os.getuid(),
                "gid": os.getgid(), "boot_id": boot_id(), "python": sys.executable, "codecs": codecs()}

    def op_ping(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    def op_which(self, msg: dict[str, Any]) -> dict[str, Any]:
        name = os.path.expanduser(msg["name"])
        found = name if os.path.isabs(name) else shutil.which(name)
        if not found or not os.path.exists(found):
            return {"path": None}
        return {"path": os.path.abspath(found), "executable": os.access(found, os.X_OK)}

    def op_realpath(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"path": os.path.realpath(os.path.expanduser(msg["path"]))}

    def op_mtimes(self, msg: dict[str, Any]) -> dict[str, Any]:
        out = []
        for path in msg["paths"]:
            try:
                out.append(os.stat(path).st_mtime_ns)
            except OSError:
                out.append(-1)
        return {"mtimes": out}

    def op_read_text(self, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            with open(os.path.expanduser(msg["path"]), "rb") as fh:
                return {"text": fh.read().decode("utf-8", "replace")}
        except FileNotFoundError:
            return {"text": None}

    def op_write_text(self, msg: dict[str, Any]) -> dict[str, Any]:
        write_atomic(os.path.expanduser(msg["path"]), msg["text"].encode())
        return {"ok": True}

    def op_makedirs(self, msg: dict[str, Any]) -> dict[str, Any]:
        os.makedirs(os.path.expanduser(msg["path"]), exist_ok=True)
        return {"ok": True}

    def op_rmtree(self, msg: dict[str, Any]) -> dict[str, Any]:
        path = os.path.expanduser(msg["path"])
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
        return {"ok": True}

    def op_lock(self, msg: dict[str, Any]) -> dict[str, Any]:
        path = os.path.expanduser(msg["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.locks[path] = self._flock(path)
        return {"ok": True}

    def op_unlock(self, msg: dict[str, Any]) -> dict[str, Any]:
        fd = self.locks.pop(os.path.expanduser(msg["path"]), None)
        if fd is not None:
            os.close(fd)
        return {"ok": True}

    def _flock(self, path: str) -> int:
        """An exclusive lock, waited for with heartbeats (it dies with this process, i.e. with the link)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        flock_waiting(fd, self._tick)
        return fd

    def _tick(self) -> None:
        """Send a heartbeat if none went out for ``heartbeat`` seconds (called while a step waits)."""
        now = time.monotonic()
        if now >= self.beat_at:
            self.wire.heartbeat()
            self.beat_at = now + self.heartbeat

    def op_run(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Run argv to its end, streaming stdout (D) and stderr (E); heartbeats while it is quiet.

        The command runs in a process group of its own that goes with this step: a client that
        dies mid-build (the wire breaks) or a timeout takes pip and its build hooks down too
        (killed before the child is reaped, so its pid cannot name someone else's group yet).
        """
        env = dict(os.environ)
        env.update(msg.get("env") or {})
        try:
            proc = subprocess.Popen(msg["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT if msg.get("merge") else subprocess.PIPE,
                                    env=env, cwd=msg.get("cwd"), close_fds=True, start_new_session=True)
        except OSError as exc:
            return {"exit": None, "start_error": exc.strerror or str(exc)}
        try:
            return self._follow_run(proc, msg)
        except BaseException:
            kill_group(proc.pid)
            proc.wait()
            raise

    def _follow_run(self, proc: Any, msg: dict[str, Any]) -> dict[str, Any]:
        streams = {proc.stdout.fileno(): b"D"} if proc.stdout else {}
        if proc.stderr is not None:
            streams[proc.stderr.fileno()] = b"E"
        deadline = time.monotonic() + msg["timeout"] if msg.get("timeout") else None
        while streams:
            ready, _, _ = select.select(list(streams), [], [], self.heartbeat)
            if not ready:
                self.wire.heartbeat()
            for fd in ready:
                data = os.read(fd, 65536)
                if data:
                    self.wire.send(streams[fd], data)
                    self.wire.wfile.flush()
                else:
                    del streams[fd]
            if deadline is not None and time.monotonic() > deadline:
                kill_group(proc.pid)
                proc.wait()
                return {"exit": None, "timed_out": True}
        return {"exit": proc.wait()}

    # --------------------------------------------------------------- code
    def op_have(self, msg: dict[str, Any]) -> dict[str, Any]:
        manifests = os.path.join(self.blobs, "manifests")
        bases = [b for b in msg.get("bases", []) if os.path.exists(os.path.join(manifests, b))]
        return {
            "checkout": os.path.isdir(os.path.join(self.root, "checkouts", msg["manifest"])),
            "manifest": os.path.exists(os.path.join(manifests, msg["manifest"])),
            "bases": bases,
            # no blob and no part of one: every blob is missing, from its start (no need to ask)
            "empty": not bases and not listdir(os.path.join(self.blobs, "tmp"))
            and not any(len(name) == 2 for name in listdir(self.blobs)),
        }

    def op_begin_upload(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Take the upload lock, then say which blobs are missing and how much of each has arrived."""
        self._begin_upload()
        digests = msg["digests"]
        here = self.present(digests)
        absent = [d for d in digests if d not in here]
        parts = set(listdir(os.path.join(self.blobs, "tmp"))) if absent else set()
        missing = []
        for digest in absent:
            have = 0
            if digest + ".part" in parts:
                with contextlib.suppress(FileNotFoundError):
                    have = os.stat(self._part(digest)).st_size
            missing.append([digest, have])
        return {"missing": missing}

    def _begin_upload(self) -> None:
        if self.upload_lock is None:
            os.makedirs(os.path.join(self.blobs, "tmp"), exist_ok=True)
            self.upload_lock = self._flock(os.path.join(self.blobs, "upload.lock"))

    def present(self, digests: list[str]) -> set[str]:
        """Which of these blobs are here: a folder's listing when many of its names are asked, else a stat each.

        Blobs this helper placed or found are remembered: nothing of mltrain's
        removes a blob, and one removed by hand meanwhile is noticed when a
        checkout cannot link it (``op_put_manifest``).
        """
        found = self.known & set(digests)
        by_folder: dict[str, list[str]] = {}
        for digest in digests:
            if digest not in found:
                by_folder.setdefault(os.path.dirname(self.blob_path(digest)), []).append(digest)
        for folder, wanted in by_folder.items():
            try:
                listed = os.stat(folder).st_size // DIRENT  # about how many names a listing would read
            except FileNotFoundError:
                continue
            if len(wanted) * 4 >= listed:
                names = set(listdir(folder))
                found.update(d for d in wanted if d[2:] in names)
            else:
                found.update(d for d in wanted if os.path.exists(os.path.join(folder, d[2:])))
        self.known |= found
        return found

    def blobs_fd(self) -> int:
        if self._blobs_fd is None:
            self._blobs_fd = os.open(self.blobs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._blobs_fd

    def _part(self, digest: str) -> str:
        return os.path.join(self.blobs, "tmp", digest + ".part")

    def op_put_blobs(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Receive blobs until ``{"end": true}``: each verified by sha256, then placed atomically.

        Large blobs come one by one, in chunks: one cut off by a dropped link
        stays as ``tmp/<digest>.part`` and is resumed by the next upload.
        Small ones come in batches (a header listing them, then one frame of
        their bytes), each written to an unnamed file linked into place once
        it is whole and verified; a cut batch leaves nothing behind. A blob
        that fails (disk full, bad hash) is never placed, and the helper stops
        (the stream is out of step).
        """
        self._begin_upload()  # the client may send a few small blobs without asking first
        if self.tmpfile:
            self.blobs_fd()  # opened once, before two threads may want it
        prebuilt = self._prebuild(msg) if "manifest" in msg else None
        frames = Prefetch(self.wire)
        writers = Writers()
        try:
            placed, received = self._put_blobs(frames, writers, prebuilt)
            writers.wait()
        except BaseException:
            if prebuilt is not None:
                prebuilt.abandon()
            raise
        finally:
            writers.close()
        self._end_upload()
        reply: dict[str, Any] = {"placed": placed, "bytes": received}
        if prebuilt is not None:
            path = prebuilt.finish()
            if path is not None:
                reply["path"] = path
        return reply

    def _prebuild(self, msg: dict[str, Any]) -> Prebuild | None:
        """The whole manifest sent ahead of the blobs: its checkout is built while they arrive (``Prebuild``).

        Its frame is read whatever happens; a manifest that does not match its sha256 only means no prebuild
        (``put_manifest`` comes next, as without one).
        """
        kind, data = self.wire.recv()
        head = msg["manifest"]
        size = head.get("size") if isinstance(head, dict) else None
        if kind != b"D" or not isinstance(size, int) or size > MAX_MANIFEST:
            raise Fatal(f"protocol: a manifest sent with blobs must declare its size, at most {MAX_MANIFEST} bytes")
        canonical = inflate("zlib", data, size)
        if hashlib.sha256(canonical).hexdigest() != head.get("sha256"):
            return None
        manifest_id = str(head.get("id"))
        self.blob_path(manifest_id)  # a digest, or the helper stops
        if os.path.isdir(os.path.join(self.root, "checkouts", manifest_id)):
            return None
        return Prebuild(self, manifest_id, canonical, [entry(r) for r in json.loads(canonical)["entries"]])

    def _put_blobs(self, frames: Prefetch, writers: Writers, prebuilt: Prebuild | None = None) -> tuple[int, int]:
        placed = received = 0
        made: set[str] = set()
        while True:
            if prebuilt is not None:
                prebuilt.link_while(frames.idle)
            head = frames.recv_json()
            if head.get("end"):
                break
            if "batch" in head:
                received += self._receive_batch(frames, head, made, writers, prebuilt)
                placed += len(head["batch"])
                continue
            digest, offset, size = head["blob"], int(head["offset"]), int(head["size"])
            final = self.blob_path(digest)
            part = self._part(digest)
            try:
                received += self._receive(frames, part, digest, offset, size, writers)
                self._folder(final, made)
                os.replace(part, final)
                self.known.add(digest)
                placed += 1
                if prebuilt is not None:
                    prebuilt.placed(digest)
            except EOFError:
                raise  # the link dropped: keep the part for the next upload
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(part)
                raise
        return placed, received

    @staticmethod
    def _folder(path: str, made: set[str]) -> str:
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        return folder

    def _receive_batch(self, frames: Prefetch, head: dict[str, Any], made: set[str], writers: Writers,
                       prebuilt: Prebuild | None = None) -> int:
        """Check the batch's sha256, then hand its blobs' halves to the writers (``made`` is shared: sets are)."""
        rows = head["batch"]
        kind, data, sha = frames.recv_seen()
        if kind != b"D" or sha is None:
            raise Fatal("protocol: a batch of blobs does not match its header")
        if sha != head.get("sha256"):
            raise Fatal(f"a batch of {len(rows)} blobs failed verification (sha256 mismatch); submit again")
        view = memoryview(data)
        blobs = []
        at = 0
        for digest, size in rows:
            blobs.append((self.blob_path(digest), view[at:at + size], digest))
            at += size
        half = len(blobs) // 2
        for part in (blobs[:half], blobs[half:]):
            if part:
                writers.submit(self._place_all, part, made, prebuilt)
        self.known.update(row[0] for row in rows)
        return len(data)

    def _place_all(self, blobs: list[Any], made: set[str], prebuilt: Prebuild | None = None) -> None:
        for final, data, digest in blobs:
            self._place(final, data, made)
            if prebuilt is not None:
                prebuilt.placed(digest)

    def _place(self, final: str, data: memoryview, made: set[str]) -> None:
        """Write a whole blob under its final name atomically: an unnamed file, linked once written."""
        folder = self._folder(final, made)
        if self.tmpfile:
            try:
                fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, BLOB_MODE)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self.tmpfile = False
            else:
                try:
                    write_all(fd, data)
                    # linkat(AT_SYMLINK_FOLLOW) of the open file; passing dst_dir_fd makes Python use linkat
                    os.link(f"/proc/self/fd/{fd}", final, dst_dir_fd=self.blobs_fd())
                    return
                except FileExistsError:
                    return  # placed meanwhile by another upload: the same bytes
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.EPERM, errno.EACCES, errno.EXDEV):
                        raise
                    self.tmpfile = False  # no usable /proc here: name a temp file instead
                finally:
                    os.close(fd)
        tmp = temp_name(final)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, BLOB_MODE)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _receive(self, frames: Prefetch, part: str, digest: str, offset: int, size: int, writers: Writers) -> int:
        """Write the blob's bytes from ``offset`` on into ``part``; check the sha256 of all of it.

        The reader hashes what arrives; only a resumed blob is hashed here (the part's bytes come first).
        The chunks are written by the writers, at their offsets; all are waited for before the check.
        """
        hasher = hashlib.sha256() if offset else None
        fd = os.open(part, os.O_RDWR | os.O_CREAT | (0 if offset else os.O_TRUNC), 0o644)
        try:
            if hasher is not None:
                if os.fstat(fd).st_size < offset:
                    raise Fatal(f"blob {digest}: resumed at {offset}, but only part of it is here")
                left = offset
                while left:
                    chunk = os.read(fd, min(CHUNK, left))
                    hasher.update(chunk)
                    left -= len(chunk)
                os.ftruncate(fd, offset)
            at = offset
            while at < size:
                kind, data = frames.recv()
                if kind != b"D" or len(data) > size - at:
                    raise Fatal(f"protocol: blob {digest} overruns its size")
                writers.submit(pwrite_all, fd, data, at)
                if hasher is not None:
                    hasher.update(data)
                at += len(data)
            trailer = frames.recv_json()
            writers.wait()
            received = hasher.hexdigest() if hasher is not None else trailer.get("received")
            if trailer.get("sha256") != received:
                raise Fatal(f"blob {digest} failed verification (sha256 mismatch); submit again")
            os.fchmod(fd, BLOB_MODE)
        finally:
            with contextlib.suppress(BaseException):
                writers.jobs.join()  # no write may outlive the file it writes to
            os.close(fd)
        return size - offset

    def _end_upload(self) -> None:
        if self.upload_lock is not None:
            os.close(self.upload_lock)
            self.upload_lock = None

    def op_put_manifest(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Store a manifest (sent whole, or as edits of one this host has), then make its checkout."""
        manifest_id = msg["id"]
        base = msg.get("base")
        removed: list[Any] = []
        added: list[Any] = []
        if base:
            with open(self.blob_path(base), "rb") as fh:
                doc = json.loads(fh.read())
            rows: list[Any] = []
            base_rows = doc["entries"]
            at = 0
            for kind, value in msg["edits"]:
                if kind == "k":
                    rows += base_rows[at:at + value]
                    at += value
                elif kind == "d":
                    removed += base_rows[at:at + value]
                    at += value
                else:
                    rows += value
                    added += value
            rows += base_rows[at:]
            doc["entries"] = rows
            # ASCII-only JSON is 2x faster to make and, without a \u escape in it, the same bytes as the canonical
            canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
            if b"\\u" in canonical:
                canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        else:
            kind, data = self.wire.recv()
            size = msg.get("size")
            if not isinstance(size, int) or size > MAX_MANIFEST:
                raise Fatal(f"protocol: a whole manifest must declare its size, at most {MAX_MANIFEST} bytes")
            canonical = inflate("zlib", data, size)
        if hashlib.sha256(canonical).hexdigest() != msg["sha256"]:
            return {"mismatch": True}  # the client sends it whole instead
        if not base:
            doc = json.loads(canonical)
        # A base's blobs are all here (its marker says so): only what the edits add needs looking for.
        entries = [entry(r) for r in (added if base else doc["entries"])]
        needed = list({e[3] for e in entries if e[4] is None and e[2] > 0})
        have = self.present(needed)
        missing = sorted(d for d in needed if d not in have)
        if missing:
            return {"missing": missing}
        marker = self.store_manifest(manifest_id, canonical)
        final = os.path.join(self.root, "checkouts", manifest_id)
        try:
            if (base and not os.path.isdir(final)
                    and self._patch_checkout(base, manifest_id, [entry(r) for r in removed], entries)):
                return {"path": final, "patched": True}
            if base:
                entries = [entry(r) for r in doc["entries"]]
            return {"path": self._checkout(manifest_id, entries)}
        except FileNotFoundError:
            # a blob this helper knew of is gone (removed by hand): say which, so the client sends them again
            self.known.clear()
            needed = list({e[3] for e in (entry(r) for r in doc["entries"]) if e[4] is None and e[2] > 0})
            have = self.present(needed)
            missing = sorted(d for d in needed if d not in have)
            if not missing:
                raise
            os.unlink(marker)
            return {"missing": missing}

    def store_manifest(self, manifest_id: str, canonical: bytes) -> str:
        """Keep the manifest and write its marker (all its blobs are here: callers checked); the marker's path."""
        path = self.blob_path(manifest_id)
        if not os.path.exists(path):
            write_atomic(path, canonical)
            os.chmod(path, BLOB_MODE)
        marker = os.path.join(self.blobs, "manifests", manifest_id)
        write_atomic(marker, b"")
        return marker

    # Checkouts are immutable while a run uses them. A new snapshot usually differs from the last one in a
    # few files, and building 10,000 hardlinks costs far more than sending one file; so when no live run uses
    # the base's checkout, it is renamed and patched into the new one (the base's is rebuilt if wanted again).
    def _users_file(self, checkout_id: str) -> str:
        return os.path.join(self.root, "checkouts", checkout_id + ".users")

    def _in_use(self, checkout_id: str) -> bool:
        try:
            with open(self._users_file(checkout_id)) as fh:
                run_ids = fh.read().split()
        except FileNotFoundError:
            return False
        for run_id in run_ids:
            folder = self.run_dir(run_id)
            if exit_code(folder) is not None:
                continue
            try:
                info = launch_record(folder)
            except (OSError, ValueError):
                return True  # unreadable: assume it is
            if info is None or self.jobs.poll(folder).get("state") == "running":
                return True  # being launched, or running
        return False

    def _patch_checkout(self, base: str, manifest_id: str, removed: list[Any], added: list[Any]) -> bool:
        checkouts = os.path.join(self.root, "checkouts")
        old = os.path.join(checkouts, base)
        if not os.path.isdir(old):
            return False
        lock = self._flock(os.path.join(checkouts, ".lock"))
        try:
            if not os.path.isdir(old) or self._in_use(base):
                return False
            tmp = os.path.join(checkouts, f".tmp-{manifest_id[:16]}-{os.getpid()}-{threading.get_ident()}")
            os.rename(old, tmp)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._users_file(base))
            try:
                top = os.fsencode(tmp)
                for name, _mode, _size, _digest, _link in removed:
                    path = os.path.join(top, name)
                    os.unlink(path)
                    parent = os.path.dirname(path)
                    while parent != top and not os.listdir(parent):
                        os.rmdir(parent)
                        parent = os.path.dirname(parent)
                folders: set[bytes] = set()
                for item in added:
                    self._make(top, item, folders)
                os.rename(tmp, os.path.join(checkouts, manifest_id))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            os.close(lock)
        return True

    def _make(self, top: bytes, item: Any, folders: set[bytes]) -> None:
        """One entry of a checkout: a hardlink to its blob (executables copied), an empty file or a symlink."""
        name, mode, size, digest, link = item
        parent = os.path.dirname(name)
        if parent and parent not in folders:
            os.makedirs(os.path.join(top, parent), exist_ok=True)
            folders.add(parent)
        dest = os.path.join(top, name)
        if link is not None:
            if not link_inside(name, link):
                raise Fatal(f"manifest: link {name!r} leaves the tree")
            os.symlink(link, dest)
        elif size == 0:
            os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o755))
        elif mode == EXEC_MODE:
            shutil.copyfile(self.blob_path(digest), dest)
            os.chmod(dest, EXEC_MODE)
        else:
            try:
                os.link(self.blob_path(digest), dest)
            except OSError as exc:
                if exc.errno not in COPY_INSTEAD:
                    raise
                shutil.copyfile(self.blob_path(digest), dest)
                os.chmod(dest, BLOB_MODE)

    def checkout_tmp(self, manifest_id: str) -> str:
        """A fresh, empty folder a checkout is built in before it is renamed into place."""
        checkouts = os.path.join(self.root, "checkouts")
        os.makedirs(checkouts, exist_ok=True)
        tmp = os.path.join(checkouts, f".tmp-{manifest_id[:16]}-{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, 0o755)
        return tmp

    def _checkout(self, manifest_id: str, entries: list[Any]) -> str:
        """Build ``checkouts/<id>`` in a temp folder renamed into place."""
        checkouts = os.path.join(self.root, "checkouts")
        final = os.path.join(checkouts, manifest_id)
        if os.path.isdir(final):
            return final
        tmp = self.checkout_tmp(manifest_id)
        top = os.fsencode(tmp)
        folders: set[bytes] = set()
        try:
            for item in entries:
                self._make(top, item, folders)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if os.path.isdir(final):
                return final
            raise
        return final

    # --------------------------------------------------------------- runs
    def op_launch(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Start argv detached (own session and process group); idempotent per run id (``Jobs.launch``)."""
        return self.jobs.launch(self.run_dir(msg["run_id"]), msg["argv"], msg["cwd"], msg["env"],
                                touch=msg.get("touch", []), container=msg.get("container"),
                                guard=self._starting(msg["run_id"], msg["cwd"]))

    @contextlib.contextmanager
    def _starting(self, run_id: str, cwd: str) -> Any:
        """No checkout is patched while a run starts in it; the run is noted as one of its users."""
        checkouts = os.path.join(self.root, "checkouts")
        os.makedirs(checkouts, exist_ok=True)
        lock = self._flock(os.path.join(checkouts, ".lock"))
        try:
            if os.path.dirname(cwd) == checkouts and os.path.isdir(cwd):
                with open(self._users_file(os.path.basename(cwd)), "a") as fh:
                    fh.write(run_id + "\n")
            yield
        finally:
            os.close(lock)

    def op_poll(self, msg: dict[str, Any]) -> dict[str, Any]:
        return self.jobs.poll(self.run_dir(msg["run_id"]))

    def op_wait(self, msg: dict[str, Any]) -> dict[str, Any]:
        """``poll``'s answer once the run has ended, or after ``timeout`` seconds (heartbeats meanwhile)."""
        return self.jobs.wait(self.run_dir(msg["run_id"]), min(float(msg.get("timeout", 0)), 600.0))

    def op_read_log(self, msg: dict[str, Any]) -> dict[str, Any]:
        data = self.jobs.read_log(self.run_dir(msg["run_id"]), int(msg["offset"]), int(msg.get("limit", 4 * CHUNK)))
        self.wire.send(b"D", data)
        return {"size": len(data)}

    def op_cancel(self, msg: dict[str, Any]) -> dict[str, Any]:
        """TERM the run's process group, wait ``grace`` seconds, then KILL it (and its container)."""
        return self.jobs.cancel(self.run_dir(msg["run_id"]), float(msg.get("grace", 10.0)), msg.get("container"))

    def op_pack(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The run's outputs and metrics file as one tar stream (D frames), untrusted by the receiver."""
        import tarfile

        folder = self.run_dir(msg["run_id"])
        writer = FrameWriter(self.wire)
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for name in ("outputs", "metrics.jsonl"):
                path = os.path.join(folder, name)
                if os.path.lexists(path) and (name == "outputs" or stat.S_ISREG(os.lstat(path).st_mode)):
                    tar.add(path, arcname="run/" + name, recursive=True)
        writer.flush()
        return {"ok": True}


class FrameWriter:
    """A write-only file object that sends what it is given as D frames of about a MiB."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self.wire.send(b"D", bytes(self.buffer))
            self.wire.wfile.flush()
            self.buffer.clear()


def main() -> None:
    # SIGPIPE stays ignored (Python's default): a client that vanishes shows up as BrokenPipeError on the
    # next write, so a step can stop what it started (``op_run``'s process group) before the helper exits.
    for fd in (0, 1):  # room for 1 MiB in the pipes from and to sshd, so neither side waits on 64 KiB
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
    root = sys.argv[1] if len(sys.argv) > 1 else "~/.mltrain"
    heartbeat = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    wire = Wire(sys.stdin.buffer, sys.stdout.buffer)
    agent = Agent(root, wire, heartbeat)
    try:
        wire.reply(agent.op_hello({}))
        agent.serve()
    except BrokenPipeError:  # the client is gone: nobody to tell
        os._exit(0)


if __name__ == "__main__":
    main()
