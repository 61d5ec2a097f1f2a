"""The driver of a multi-node ``framework=distributed`` job on Ray: one launcher per node of a placement group.

Shipped as source like ``jobwrap`` (whose child it is: ``jobwrap`` gave it ``$MLTRAIN_OUTPUT_DIR`` and
``$MLTRAIN_METRICS_FILE`` and frames them when it ends); it imports nothing of mltrain, only the standard
library and ``ray``, which every Ray node has. It

* reserves a placement group of ``nodes`` bundles, ``STRICT_SPREAD`` (one node each), each bundle the
  per-node resources the client mapped (``RayExecutor.resources``), waiting at most ``wait`` seconds;
* asks bundle 0's node for its address and a free port there: ``MASTER_ADDR`` and ``MASTER_PORT``;
* runs one Ray task per bundle (a streaming generator): it starts ``jobwrap`` with the launcher's argv in its
  own process group (so the node gets the snapshot's tree, its own outputs folder, its frame) with
  ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` set, and yields its output in batches, then its exit code
  and the outputs frame's tar (checked against its size and checksum);
* writes every node's output to its own stdout (the Ray job's log, which mltrain follows), and every node's
  outputs and metrics under its own ``$MLTRAIN_OUTPUT_DIR`` / ``$MLTRAIN_METRICS_FILE`` (regular files and
  folders only, inside; the first node to write a name keeps it: ``ranks/rank_N.log`` are all distinct);
* ends with the first failing node: the others are canceled (their launchers get TERM, their ranks with
  them), its ``Error: rank N failed ...`` line is the log's last word, its exit code the job's.

Stopping: a TERM to the driver (``ray job stop``) cancels every node task the same way. Ray kills a task's
worker -- and that worker's direct children, with KILL -- when the driver dies or a task is canceled by force;
the launcher's ranks are not direct children, so each task leaves a guard behind (a detached process holding
one end of a pipe): when the worker dies without saying "done", the guard TERMs the node's process group and
KILLs it ``grace`` seconds later. No rank outlives its job.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from typing import Any

BATCH = 64 * 1024  # bytes of output one yield carries at most
TICK = 0.2  # seconds a node task waits for more output before it yields what it has

GUARD = """import os, signal, sys, time
fd, group, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
if os.fork():
    os._exit(0)
os.setsid()
said = b""
while True:
    chunk = os.read(fd, 16)
    if not chunk:
        break
    said += chunk
if said != b"done":
    try:
        os.killpg(group, signal.SIGTERM)
    except OSError:
        sys.exit(0)
    time.sleep(grace)
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""


def _guard(group: int, grace: float) -> int:
    """A detached process that stops ``group`` once the returned pipe end closes without ``done`` written to it."""
    read, write = os.pipe()
    try:
        subprocess.Popen([sys.executable, "-S", "-c", GUARD, str(read), str(group), str(grace)], pass_fds=(read,),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait()
    finally:
        os.close(read)
    return write


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """TERM the node's process group (its launcher passes it to every rank), KILL it after ``grace``."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _frame(lines: list[bytes], marker: bytes) -> tuple[int | None, bytes | None]:
    """The exit code and the tar.gz of the frame ``jobwrap`` wrote (its header line first), if it is whole."""
    head = lines[0].split()
    if len(head) != 4 or not head[1].isdigit() or not head[3].isdigit():
        return None, None
    size, digest, code = int(head[1]), head[2].decode(errors="replace"), int(head[3])
    body = b"".join(line.strip() for line in lines[1:] if not line.startswith(marker))
    try:
        data = base64.b64decode(body, validate=True)
    except ValueError:
        return code, None
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        return code, None
    return code, data


def node_task(rank: int, spec: dict[str, Any], master: str, port: int) -> Iterator[tuple[Any, ...]]:
    """One node: ``jobwrap`` running the launcher; yields ``("out", bytes)`` batches, then ``("end", code, tar)``."""
    marker = f"--mltrain-node-{secrets.token_hex(8)}--".encode()
    node_spec = {"argv": spec["argv"], "marker": marker.decode(), "limit": spec["limit"],
                 "node_python": spec["node_python"]}
    encoded = base64.b64encode(json.dumps(node_spec).encode()).decode()
    env = dict(os.environ, NODE_RANK=str(rank), MASTER_ADDR=master, MASTER_PORT=str(port))
    grace = float(spec["grace"])
    proc = subprocess.Popen([sys.executable, "-c", spec["wrapper"], encoded], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    guard = _guard(proc.pid, grace)
    lines: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in iter(lambda: proc.stdout.readline(BATCH), b""):  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    frame: list[bytes] | None = None
    framed = 0  # bytes of the frame so far
    held = b""  # a blank line just before the frame is the wrapper's, not the job's
    ended = False
    try:
        while not ended:
            out: list[bytes] = []
            size = 0
            timeout: float | None = None  # the first line of a batch is waited for; the rest for TICK at most
            while size < BATCH:
                try:
                    line = lines.get(timeout=timeout)
                except queue.Empty:
                    break
                timeout = TICK
                if line is None:
                    ended = True
                    break
                if frame is not None:
                    framed += len(line)
                    if framed <= 2 * int(spec["limit"]) + BATCH:  # more than the wrapper writes: not its frame
                        frame.append(line)
                elif line.startswith(marker + b" "):
                    frame, held = [line], b""
                elif line == b"\n" and not held:
                    held = line
                else:
                    out.extend((held, line))
                    size += len(held) + len(line)
                    held = b""
            if out:
                yield ("out", b"".join(out))
        code = proc.wait()
        os.write(guard, b"done")
    finally:
        if proc.poll() is None:
            _stop(proc, grace)
        os.close(guard)
    wrapped, data = _frame(frame, marker) if frame else (None, None)
    yield ("end", wrapped if wrapped is not None else (code if code >= 0 else 128 - code), data)


def master_task(port: int) -> tuple[str, int]:
    """Bundle 0's node: its address as the cluster knows it, and ``port`` (``framework.master_port``) or, for 0,
    a port free there now."""
    import ray

    address = str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
    if port:
        return address, port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return address, int(sock.getsockname()[1])


def _extract(data: bytes, outputs: str, metrics: str) -> None:
    """A node's ``run/outputs`` and ``run/metrics.jsonl`` into this job's: files and folders inside only."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as zipped, tarfile.open(fileobj=zipped, mode="r|") as tar:
        for member in tar:
            parts = member.name.split("/")
            if any(part in ("", ".", "..") for part in parts) or parts[0] != "run":
                continue
            if parts[1:] == ["metrics.jsonl"] and member.isfile():
                source = tar.extractfile(member)
                if source is not None:
                    with open(metrics, "ab") as fh:
                        fh.write(source.read())
                continue
            if len(parts) < 3 or parts[1] != "outputs":
                continue
            path = os.path.join(outputs, *parts[2:])
            if member.isdir():
                os.makedirs(path, exist_ok=True)
            elif member.isfile():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                source = tar.extractfile(member)
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                except OSError:
                    continue  # an earlier node wrote it
                with os.fdopen(fd, "wb") as fh:
                    if source is not None:
                        fh.write(source.read())


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main() -> int:
    spec = json.loads(base64.b64decode(sys.argv[1]).decode())
    nodes, bundle = int(spec["nodes"]), dict(spec["bundle"])
    try:
        import logging

        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    except ImportError as exc:
        _say(f"Error: the job's Python ({sys.executable}) cannot import ray, which the multi-node driver needs: {exc}")
        return 2
    ray.init(logging_level=logging.ERROR, log_to_driver=False)
    shown = ", ".join(f"{k}={v:g}" for k, v in bundle.items()) or "no resources"
    group = placement_group([bundle] * nodes, strategy="STRICT_SPREAD")
    waited = 0.0
    while not group.wait(min(10.0, max(0.1, float(spec["wait"]) - waited))):
        waited += 10.0
        if waited >= float(spec["wait"]):
            remove_placement_group(group)
            _say(f"Error: the Ray cluster did not place {nodes} bundles ({shown} each) on {nodes} different nodes "
                 f"within {float(spec['wait']):g} s (STRICT_SPREAD); free those resources, add nodes, or ask for "
                 "less (resources.cpus is per node)")
            return 1
        _say(f"[mltrain] waiting for the Ray cluster to place {nodes} bundles ({shown} each, one per node)")

    def placed(index: int) -> Any:
        return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)

    master, port = ray.get(ray.remote(master_task).options(num_cpus=0, scheduling_strategy=placed(0)).remote(
        int(spec.get("master_port") or 0)))
    remote = ray.remote(node_task)
    each = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0), "memory": bundle.get("memory") or None}
    tasks: list[Any] = [remote.options(num_returns="streaming", scheduling_strategy=placed(index), **each).remote(
        index, spec, master, port) for index in range(nodes)]
    lock = threading.Lock()
    ended: queue.Queue[int] = queue.Queue()
    results: dict[int, tuple[int | None, bytes | None, str]] = {}
    errors: dict[int, bytes] = {}
    last: list[bytes] = [b""]

    def pump(index: int) -> None:
        code: int | None = None
        data: bytes | None = None
        why = ""
        try:
            for ref in tasks[index]:
                item = ray.get(ref)
                if item[0] == "end":
                    code, data = item[1], item[2]
                    continue
                with lock:
                    sys.stdout.buffer.write(item[1])
                    sys.stdout.flush()
                    for line in item[1].splitlines():
                        if line.startswith(b"Error: "):
                            errors.setdefault(index, line)
                            last[0] = line
        except Exception as exc:  # canceled, or its worker or node died
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        results[index] = (code, data, why)
        ended.put(index)

    def cancel(_sig: int = 0, _frame: object = None) -> None:
        for task in tasks:
            with contextlib.suppress(Exception):
                ray.cancel(task)

    signal.signal(signal.SIGTERM, cancel)
    for index in range(nodes):
        threading.Thread(target=pump, args=(index,), daemon=True).start()
    failed: int | None = None
    for _ in range(nodes):
        index = ended.get()
        code = results[index][0]
        if failed is None and code != 0:
            failed = index
            cancel()
    for index in range(nodes):
        data = results[index][1]
        if data is not None:
            try:
                _extract(data, os.environ["MLTRAIN_OUTPUT_DIR"], os.environ["MLTRAIN_METRICS_FILE"])
            except (OSError, tarfile.TarError, EOFError) as exc:
                _say(f"[mltrain] the outputs of node {index} could not be read: {exc}")
    with contextlib.suppress(Exception):
        remove_placement_group(group)
    if failed is None:
        return 0
    code, _, why = results[failed]
    line = errors.get(failed)
    if line is None:
        line = f"Error: node {failed} of the job ended ({why or f'exit code {code}'})".encode()
    if last[0] != line:
        _say(line.decode(errors="replace"))
    return code if code else 1


if __name__ == "__main__":
    sys.exit(main())
