"""The process launcher ``framework=distributed`` runs on the target: N ranks of the script on this node.

Standard library only, and it imports nothing of mltrain: the job's interpreter runs this file's text
(``python -S -c <source> mltrain-launch CONFIG -- ARGV...``), so it works wherever the script does -- this
machine, an SSH host, a container -- with nothing installed there. ``CONFIG`` is JSON:
``{"nproc", "nnodes", "node_rank", "master_addr", "master_port" (0: a free port here), "launcher"
("mltrain" | "torchrun"), "grace", "from_env"}``; ``ARGV`` is the script's argv, interpreter first. With
``from_env`` the node's place comes from the launcher's own environment instead -- ``NODE_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``, set by whoever starts one launcher per node (Ray's multi-node driver), so
every node runs the same argv.

Each rank gets the contract ``torchrun`` sets -- ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``NODE_RANK`` (and ``GROUP_RANK``; ``OMP_NUM_THREADS=1`` unless set,
as torchrun does) -- so ``init_process_group("env://")`` works unchanged. Its output goes to the job's
stream with a ``[rank N] `` prefix, line by line, and whole to ``$MLTRAIN_OUTPUT_DIR/ranks/rank_N.log``.

The first rank to fail ends the job: the others get TERM, then KILL after ``grace`` seconds, and the
launcher exits with that rank's code after printing ``Error: rank N failed (...): <its last error line>``
(what the run's failure reason shows). A TERM or INT to the launcher (a cancel) goes to every rank alike.
``launcher: torchrun`` runs ``python -m torch.distributed.run`` with the same numbers instead, once it has
checked that torch is importable there (its per-rank logs then go to ``ranks/torchrun/``, in torchrun's layout).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Any

LINE_LIMIT = 64 * 1024  # bytes of one output line passed on with its prefix; longer lines are split
_ERROR = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)\b.*")


def free_port(addr: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((addr if addr not in ("localhost", "") else "127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_env(base: dict[str, str], config: dict[str, Any], local_rank: int, port: int) -> dict[str, str]:
    nproc, node_rank = int(config["nproc"]), int(config.get("node_rank", 0))
    env = dict(base)
    env.update({
        "MASTER_ADDR": str(config["master_addr"]), "MASTER_PORT": str(port),
        "WORLD_SIZE": str(nproc * int(config["nnodes"])), "RANK": str(node_rank * nproc + local_rank),
        "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(nproc), "NODE_RANK": str(node_rank),
        "GROUP_RANK": str(node_rank),
    })
    if nproc > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


class Rank:
    def __init__(self, rank: int, argv: list[str], env: dict[str, str], log_dir: str | None, out: IO[bytes],
                 lock: threading.Lock) -> None:
        self.rank = rank
        self.last_error = ""
        self.last_line = ""
        self.log: IO[bytes] | None = None
        if log_dir:
            try:
                self.log = open(os.path.join(log_dir, f"rank_{rank}.log"), "ab")  # noqa: SIM115
            except OSError:
                self.log = None
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.prefix = f"[rank {rank}] ".encode()
        self.reader = threading.Thread(target=self._pump, args=(out, lock), daemon=True)
        self.reader.start()

    def _pump(self, out: IO[bytes], lock: threading.Lock) -> None:
        stream = self.proc.stdout
        assert stream is not None
        while True:
            line = stream.readline(LINE_LIMIT)
            if not line:
                break
            if self.log is not None:
                try:
                    self.log.write(line)
                    self.log.flush()
                except OSError:
                    self.log = None
            text = line.decode(errors="replace").strip()
            if text:
                self.last_line = text
                if _ERROR.match(text):
                    self.last_error = text
            with lock:
                out.write(self.prefix + line + (b"" if line.endswith(b"\n") else b"\n"))
                out.flush()
        if self.log is not None:
            self.log.close()

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(sig)


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


def run_ranks(config: dict[str, Any], argv: list[str]) -> int:
    nproc = int(config["nproc"])
    port = int(config.get("master_port") or 0) or free_port(str(config["master_addr"]))
    grace = float(config.get("grace", 10.0))
    log_dir = None
    outputs = os.environ.get("MLTRAIN_OUTPUT_DIR")
    if outputs:
        log_dir = os.path.join(outputs, "ranks")
        try:
            os.makedirs(log_dir, exist_ok=True)
        except OSError:
            log_dir = None
    out = sys.stdout.buffer
    lock = threading.Lock()
    stopping: list[int] = []

    def on_signal(sig: int, _frame: object) -> None:
        stopping.append(sig)
        for rank in ranks:
            rank.signal(signal.SIGTERM)

    ranks: list[Rank] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    for local in range(nproc):
        number = int(config.get("node_rank", 0)) * nproc + local
        try:
            ranks.append(Rank(number, argv, rank_env(dict(os.environ), config, local, port), log_dir, out, lock))
        except OSError as exc:
            for rank in ranks:
                rank.signal(signal.SIGKILL)
                rank.proc.wait()
            out.write(f"Error: could not start rank {number} ({argv[0]}): {exc.strerror or exc}\n".encode())
            out.flush()
            return 127
    failed: Rank | None = None
    deadline: float | None = None
    while True:
        running = [r for r in ranks if r.proc.poll() is None]
        if failed is None:
            for rank in ranks:
                code = rank.proc.poll()
                if code not in (None, 0):
                    failed = rank
                    deadline = time.monotonic() + grace
                    for other in running:
                        other.signal(signal.SIGTERM)
                    break
        if not running:
            break
        if (stopping or failed is not None) and deadline is None:
            deadline = time.monotonic() + grace
        if deadline is not None and time.monotonic() > deadline:
            for rank in running:
                rank.signal(signal.SIGKILL)
        time.sleep(0.02)
    for rank in ranks:
        rank.reader.join(timeout=5)
    if failed is not None:
        code = _exit_code(failed.proc.returncode)
        why = failed.last_error or failed.last_line or "no output"
        how = f"killed by signal {-failed.proc.returncode}" if failed.proc.returncode < 0 else f"exit code {code}"
        with lock:
            out.write(f"Error: rank {failed.rank} failed ({how}): {why[:300]}\n".encode(errors="replace"))
            out.flush()
        return code
    if stopping:
        return 128 + stopping[0]
    return 0


def run_torchrun(config: dict[str, Any], argv: list[str]) -> int:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        sys.stdout.write("Error: framework.launcher=torchrun needs torch in the job's environment "
                         "(add it to the environment, or use framework.launcher=mltrain)\n")
        sys.stdout.flush()
        return 2
    port = int(config.get("master_port") or 0) or free_port(str(config["master_addr"]))
    command = [argv[0], "-m", "torch.distributed.run", "--nproc_per_node", str(config["nproc"]),
               "--nnodes", str(config["nnodes"]), "--node_rank", str(config.get("node_rank", 0)),
               "--master_addr", str(config["master_addr"]), "--master_port", str(port)]
    outputs = os.environ.get("MLTRAIN_OUTPUT_DIR")
    if outputs:  # torchrun's own per-rank files (<run id>/attempt_0/<rank>/), its stream prefixed by rank (--tee)
        command += ["--log_dir", os.path.join(outputs, "ranks", "torchrun"), "--tee", "3"]
    command += argv[1:]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def forward(sig: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    return _exit_code(proc.wait())


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write("usage: launcher CONFIG_JSON -- PYTHON SCRIPT [ARGS...]\n")
        return 2
    config: dict[str, Any] = json.loads(args[0])
    argv = list(args[2:])
    if config.get("from_env"):
        try:
            config.update(node_rank=int(os.environ["NODE_RANK"]), master_addr=os.environ["MASTER_ADDR"],
                          master_port=int(os.environ["MASTER_PORT"]))
        except (KeyError, ValueError) as exc:
            sys.stdout.write(f"Error: the launcher was told to take its place from the environment, but "
                             f"NODE_RANK, MASTER_ADDR and MASTER_PORT are not all set ({exc})\n")
            sys.stdout.flush()
            return 2
    if config.get("launcher") == "torchrun":
        return run_torchrun(config, argv)
    return run_ranks(config, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[2:] if sys.argv[1:2] == ["mltrain-launch"] else sys.argv[1:]))
