"""A run's container, set up once for every target that starts one, and the checks before it starts.

Two targets run a job in a container: ``compute=docker`` (through the
Engine API) and ``compute=ssh`` with an image (``docker run`` on the host,
under the sh wrapper). Both give it the same container:

* **who**: a uid:gid that is not root unless asked (``root_warning``), never
  privileged, ``no-new-privileges``, ``init`` on (signals reach the script,
  zombies are reaped), and never the engine's socket (``check_own_mounts``,
  ``volume_exposures``): a bind that is, holds or lies inside the socket --
  as written or through links, resolved on the engine's host -- is refused.
* **/mltrain/code** (the working directory): the snapshot, read-only.
* **/mltrain/run/outputs**, **/mltrain/run/metrics.jsonl**: what
  ``$MLTRAIN_OUTPUT_DIR`` / ``$MLTRAIN_METRICS_FILE`` point at.
* **/mltrain/home**: ``$HOME``, writable, for a uid the image may not know.
* **command**: the argv as the entrypoint, never a shell string; the image's
  own ENTRYPOINT is not used.
* labels ``mltrain.run_id`` / ``mltrain.experiment``, name ``mltrain-<run id>``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mltrain.errors import ConfigError

ROOT = "/mltrain"
CODE_DIR = f"{ROOT}/code"
RUN_DIR = f"{ROOT}/run"
OUTPUT_DIR = f"{RUN_DIR}/outputs"
METRICS_FILE = f"{RUN_DIR}/metrics.jsonl"
HOME_DIR = f"{ROOT}/home"
SOCKET_PATHS = ("/var/run/docker.sock", "/run/docker.sock")


def container_name(run_id: str) -> str:
    return f"mltrain-{run_id}"


@dataclass(frozen=True)
class RunContainer:
    """One run's container; ``engine_body`` and ``run_argv`` say the same thing to the Engine API and to ``docker run``.

    ``code``, ``outputs``, ``metrics``: host paths bind-mounted at their
    places (None: the container holds its own, copied in or pulled back by
    the target). ``volumes``: extra ``host:container:mode`` binds, checked
    by the caller. ``home_tmpfs``: ``$HOME`` is a tmpfs (else the target puts
    the folder there itself, owned by the job's user).
    """

    image: str
    argv: Sequence[str]
    user: str
    run_id: str
    experiment: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    code: str | None = None
    outputs: str | None = None
    metrics: str | None = None
    volumes: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    home_tmpfs: bool = True
    limits: Sequence[str] = ()  # ``docker run`` options for a resource request (--gpus, --cpus, --memory)

    @property
    def name(self) -> str:
        return container_name(self.run_id)

    def all_labels(self) -> dict[str, str]:
        return {"mltrain.run_id": self.run_id, "mltrain.experiment": self.experiment, **self.labels}

    def binds(self) -> list[str]:
        binds = [f"{self.code}:{CODE_DIR}:ro"] if self.code else []
        binds += list(self.volumes)
        if self.outputs:
            binds.append(f"{self.outputs}:{OUTPUT_DIR}:rw")
        if self.metrics:
            binds.append(f"{self.metrics}:{METRICS_FILE}:rw")
        return binds

    def job_env(self) -> dict[str, str]:
        """The job's variables, ``$MLTRAIN_OUTPUT_DIR`` and ``$MLTRAIN_METRICS_FILE`` pointing inside."""
        return {**self.env, "MLTRAIN_OUTPUT_DIR": OUTPUT_DIR, "MLTRAIN_METRICS_FILE": METRICS_FILE}

    def environment(self) -> dict[str, str]:
        """``job_env`` and ``$HOME`` (unless the run sets its own)."""
        return {"HOME": HOME_DIR, **self.job_env()}

    def engine_body(self, host_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The create-container request (Engine API ``POST /containers/create``); ``host_config`` adds limits."""
        host: dict[str, Any] = {
            "Binds": self.binds(), "Init": True, "SecurityOpt": ["no-new-privileges"], "Privileged": False,
            **(host_config or {}),
        }
        if self.home_tmpfs:
            host["Tmpfs"] = {HOME_DIR: "mode=1777"}
        return {
            "Image": self.image, "Entrypoint": list(self.argv[:1]), "Cmd": list(self.argv[1:]),
            "WorkingDir": CODE_DIR, "Env": [f"{k}={v}" for k, v in self.environment().items()], "User": self.user,
            "Labels": self.all_labels(), "Tty": False, "OpenStdin": False, "AttachStdin": False, "HostConfig": host,
        }

    def run_argv(self, docker: str = "docker") -> list[str]:
        """``docker run --rm`` of this container, for a shell-less host client.

        Values of the variables never appear on the command line: ``-e NAME``
        passes each from the environment of the ``docker`` client, which must
        therefore get ``job_env()`` (but keeps its own ``$HOME``: its config is there).
        """
        labels = [w for key, value in self.all_labels().items() for w in ("--label", f"{key}={value}")]
        mounts = [w for bind in self.binds() for w in ("-v", bind)]
        tmpfs = ["--tmpfs", f"{HOME_DIR}:mode=1777"] if self.home_tmpfs else []
        variables = [w for name in sorted(self.job_env()) for w in ("-e", name)]
        return [
            docker, "run", "--rm", "--init", "--name", self.name, *labels, "--user", self.user,
            "--security-opt", "no-new-privileges", *self.limits, *tmpfs, *mounts, "-w", CODE_DIR,
            "-e", f"HOME={HOME_DIR}",
            *variables, "--entrypoint", self.argv[0], self.image, *self.argv[1:],
        ]


# ------------------------------------------------------------------- checks
def root_warning(user: str, *, chosen: bool, because: str, fix: str) -> str | None:
    """A warning for the run's log when the job would run as root without anyone having asked for it."""
    if chosen or user.partition(":")[0] not in ("0", "root"):
        return None
    return f"the job runs as root in the container, because {because}; {fix}"


def socket_exposure(source: str, sockets: Iterable[str], resolve: Callable[[str], str | None] | None = None,
                    ) -> tuple[str, str] | None:
    """``(socket, how)`` when bind-mounting host path ``source`` hands a container the engine's socket, else None.

    A bind exposes the socket when it is the socket, holds it (``/``, ``/var``,
    ``/run``, ``/var/run``) or lies inside it. Both sides are compared as
    written and, through ``resolve`` (symlinks resolved on the engine's host,
    None where that host's files cannot be seen), as the engine will see them:
    the engine follows links in a bind's source, and ``/var/run`` is usually a
    link to ``/run``.
    """

    def forms(path: str) -> list[str]:
        out = [_clean(path)]
        real = resolve(path) if resolve is not None else None
        if real and _clean(real) not in out:
            out.append(_clean(real))
        return out

    for sock in sockets:
        for s in forms(sock):
            for src in forms(source):
                how = "is" if src == s else "holds" if _under(s, src) else "lies inside" if _under(src, s) else ""
                if how:
                    said = source if src == _clean(source) else f"{source} (a link to {src})"
                    return sock, f"{said} is the socket" if said == s else f"{said} {how} {s}"
    return None


def _clean(path: str) -> str:
    return "/" + posixpath.normpath(path).lstrip("/")


def _under(child: str, parent: str) -> bool:
    return child != parent and (parent == "/" or child.startswith(parent + "/"))


def check_own_mounts(sources: Iterable[str], sockets: Iterable[str], resolve: Callable[[str], str | None] | None,
                     *, where: str, hint: str, on: str = "") -> None:
    """mltrain's own binds (code, outputs, metrics) never hand the job the engine's socket, whatever is allowed.

    They are folders mltrain made, but a link put there (a checkout replaced
    by a link to ``/run``) would carry the socket along: each is resolved on
    the engine's host. ``where`` starts the error, ``on`` names the host, ``hint`` ends it.
    """
    sockets = list(sockets)
    for source in sources:
        exposed = socket_exposure(source, sockets, resolve)
        if exposed is not None:
            raise ConfigError(f"{where}: the container's mount {exposed[1]}{on} would hand the job the Docker "
                              f"engine's socket (root on the host); mltrain never does that: {hint}")


def volume_policy(exposed: Sequence[str], *, allow: bool) -> list[str]:
    """Refuse user volumes that hand the job the socket (one phrase each in ``exposed``), unless ``allow``:
    then the warnings for the run's log."""
    if exposed and not allow:
        raise ConfigError(
            f"compute.volumes: {exposed[0]}, and with it root on the engine's host; mount a narrower folder, "
            "or set compute.allow_engine_socket=true if the job must drive the engine"
        )
    return [f"compute.allow_engine_socket=true: {what}; the job can take root on the engine's host"
            for what in exposed]


def warn_in_log(log_path: Path, warnings: Iterable[str]) -> None:
    """Warnings of this run into its log, before the job's output: shown once, with the run's stream."""
    text = "".join(f"[mltrain] warning: {w}\n" for w in warnings)
    if text:
        with open(log_path, "ab") as fh:
            fh.write(text.encode(errors="replace"))
