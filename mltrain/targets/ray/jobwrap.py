"""The job's wrapper on the Ray node: runs the argv, then hands outputs and metrics back through the job's log.

Shipped as source in the entrypoint (``python -c``), so nothing of mltrain needs to be installed on
the nodes: standard library only, Python >= 3.8. It

* gives the job its own ``$MLTRAIN_OUTPUT_DIR`` and ``$MLTRAIN_METRICS_FILE`` in a temporary folder
  (Ray's unpacked working_dir is shared by every job of the same snapshot);
* runs the argv as a child (same stdout: Ray's job log), forwarding nothing -- Ray's stop signals
  every process of the job itself;
* once the child has ended, appends one frame to the log: a line ``<marker> <size> <sha256> <exit code>``, the
  outputs and metrics as a gzip-compressed tar in base64 lines, and ``<marker> end`` (the header line
  ends with the script's exit code: Ray reports none for a stopped job). The marker is
  random per run (chosen by the client), so ordinary output never looks like one; the client treats
  what follows it as hostile input all the same (``mltrain.targets.ray.frame``);
* exits with the child's exit code (128 + N for a signal), so Ray's status follows the script.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile

INDEX = ".mltrain-parts.json"  # in the working_dir: the parts (py_modules) that make the tree


def _size(folder: str) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _pack(run: str, limit: int) -> tuple[bytes, str | None]:
    """The tar.gz of the run folder (``run/...`` names); over ``limit`` bytes, of its metrics only, with a note."""
    note = None
    members = ["outputs", "metrics.jsonl"]
    if _size(run) > limit:
        note = (f"outputs not returned: more than {limit} bytes, the most that comes back through the job log; "
                "write large artifacts to storage the client can read")
        members = ["metrics.jsonl"]
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1, mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            path = os.path.join(run, member)
            if os.path.lexists(path):
                tar.add(path, arcname="run/" + member, recursive=True)
    return buffer.getvalue(), note


def _frame(data: bytes, marker: str, code: int) -> None:
    out = sys.stdout
    out.write(f"\n{marker} {len(data)} {hashlib.sha256(data).hexdigest()} {code}\n")
    text = base64.b64encode(data).decode()
    for start in range(0, len(text), 4096):
        out.write(text[start:start + 4096] + "\n")
    out.write(f"{marker} end\n")


def _workdir(scratch: str, env: dict) -> str:  # type: ignore[type-arg]
    """The run's own working folder: the files of every part (Ray's ``py_modules`` folders) linked into one tree.

    The parts are found on ``PYTHONPATH`` by their folder names (the index in the working_dir lists them), and
    taken off it: the script sees its tree where it runs, as on every target. Without an index, Ray's
    working_dir itself.
    """
    try:
        with open(INDEX) as fh:
            wanted = json.load(fh)["parts"]
    except (OSError, ValueError, KeyError):
        return os.getcwd()
    entries = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    found = {os.path.basename(p.rstrip("/")): p for p in entries}
    missing = [name for name in wanted if name not in found]
    if missing:
        raise RuntimeError(f"{len(missing)} part(s) of the code did not reach this Ray node: {missing[0]}")
    env["PYTHONPATH"] = os.pathsep.join(p for p in entries if os.path.basename(p.rstrip("/")) not in wanted)
    if not env["PYTHONPATH"]:
        del env["PYTHONPATH"]
    workdir = os.path.join(scratch, "wd")
    for name in wanted:
        top = found[name]
        for root, _, files in os.walk(top):
            target = os.path.join(workdir, os.path.relpath(root, top))
            os.makedirs(target, exist_ok=True)
            for file in files:
                source, dest = os.path.join(root, file), os.path.join(target, file)
                try:
                    os.link(source, dest)
                except OSError:
                    shutil.copy2(source, dest)
    os.makedirs(workdir, exist_ok=True)
    return workdir


def main() -> None:
    spec = json.loads(base64.b64decode(sys.argv[1]).decode())
    argv = list(spec["argv"])
    if argv and argv[0] == spec.get("node_python"):
        argv[0] = sys.executable  # the node's interpreter that runs this wrapper: no second PATH lookup
    scratch = tempfile.mkdtemp(prefix="mltrain-ray-")
    run = os.path.join(scratch, "run")
    os.makedirs(os.path.join(run, "outputs"))
    metrics = os.path.join(run, "metrics.jsonl")
    open(metrics, "ab").close()
    env = dict(os.environ, MLTRAIN_OUTPUT_DIR=os.path.join(run, "outputs"), MLTRAIN_METRICS_FILE=metrics)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # Ray signals the child too: it ends, we pack
    try:
        child = subprocess.Popen(argv, env=env, cwd=_workdir(scratch, env))
    except (OSError, RuntimeError) as exc:
        sys.stdout.write(f"mltrain: cannot start {argv[0]} on this Ray node: {exc}\n")
        sys.stdout.flush()
        shutil.rmtree(scratch, ignore_errors=True)
        sys.exit(127)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    sys.stdout.flush()
    code = code if code >= 0 else 128 - code
    try:
        data, note = _pack(run, int(spec["limit"]))
        if note:
            sys.stdout.write(f"[mltrain] {note}\n")
        _frame(data, spec["marker"], code)
        sys.stdout.flush()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
