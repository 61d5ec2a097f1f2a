"""``environment=venv``: a virtualenv built once per content hash and reused by every later run.

The folder name is the fingerprint, so a cache hit is one ``stat`` of the
completion marker. Builds take a file lock (two sweep trials asking for the
same environment build it once) and happen in place: a virtualenv cannot be
renamed after it is built (its scripts hold absolute paths), so an unfinished
build is recognised by the missing marker and started over.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from mltrain.environments.base import Environment, LogFn, PreparedEnvironment, current_interpreter, digest
from mltrain.environments.probe import probe, resolve_interpreter
from mltrain.errors import ConfigError, EnvironmentBuildError

MARKER = ".mltrain-complete"


def find_uv() -> str | None:
    beside = Path(sys.executable).parent / "uv"
    if beside.exists():
        return str(beside)
    return shutil.which("uv")


class Venv(Environment):
    kind = "venv"

    def _base_python(self) -> str:
        return resolve_interpreter(self.config.python or current_interpreter())

    def _requirements(self) -> tuple[Path | None, str]:
        if not self.config.requirements:
            return None, ""
        path = (self.source_dir / self.config.requirements).absolute()
        try:
            return path, path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"environment.requirements: cannot read {path} ({exc.strerror}); give a path relative to source_dir"
            ) from exc

    def fingerprint(self) -> str:
        _, requirements = self._requirements()
        base = self._base_python()
        return digest({
            "kind": self.kind,
            "python": os.path.realpath(base),
            "packages": sorted(self.config.packages),
            "requirements": requirements,
            "pip_args": list(self.config.pip_args),
            "system_site_packages": self.config.system_site_packages,
        })

    def directory(self) -> Path:
        return self.cache_dir / "envs" / f"venv-{self.fingerprint()[:24]}"

    def is_prepared(self, target: Any) -> bool:
        return (self.directory() / MARKER).exists()

    def _prepared(self, folder: Path, freeze: str) -> PreparedEnvironment:
        return PreparedEnvironment(
            interpreter=str(folder / "bin" / "python"),
            fingerprint=self.fingerprint(),
            description=f"venv: {folder}",
            freeze=freeze,
        )

    def prepare(self, log: LogFn, target: Any) -> PreparedEnvironment:
        folder = self.directory()
        marker = folder / MARKER
        if marker.exists():
            return self._prepared(folder, json.loads(marker.read_text()).get("freeze", ""))
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if marker.exists():  # built by someone else while we waited
                return self._prepared(folder, json.loads(marker.read_text()).get("freeze", ""))
            shutil.rmtree(folder, ignore_errors=True)
            try:
                self._build(folder, log)
                freeze = probe(str(folder / "bin" / "python"), self.cache_dir, refresh=True).freeze
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            marker.write_text(json.dumps({"fingerprint": self.fingerprint(), "freeze": freeze}))
        return self._prepared(folder, freeze)

    def _build(self, folder: Path, log: LogFn) -> None:
        base = self._base_python()
        requirements, _ = self._requirements()
        installer = self.config.installer
        uv = find_uv() if installer in ("auto", "uv") else None
        if installer == "uv" and uv is None:
            raise EnvironmentBuildError("environment.installer=uv but uv is not installed; pip install uv, or use pip")
        packages = [*self.config.packages, *(["-r", str(requirements)] if requirements else [])]
        python = str(folder / "bin" / "python")
        system = ["--system-site-packages"] if self.config.system_site_packages else []
        if uv:
            steps = [[uv, "venv", "--quiet", *system, "--python", base, str(folder)]]
            if packages:
                steps.append([uv, "pip", "install", "--python", python, *self.config.pip_args, *packages])
        else:
            steps = [[base, "-m", "venv", *system, str(folder)]]
            if packages:
                steps.append([python, "-m", "pip", "install", "--disable-pip-version-check",
                              *self.config.pip_args, *packages])
        log(f"building venv {folder.name} ({'uv' if uv else 'pip'}): {' '.join(self.config.packages) or '-'}")
        for step in steps:
            _run_step(step, log)

    def describe(self) -> str:
        return f"venv ({len(self.config.packages)} packages{', requirements' if self.config.requirements else ''})"


def _run_step(argv: list[str], log: LogFn) -> None:
    tail: deque[str] = deque(maxlen=20)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL, errors="replace")
    except OSError as exc:
        raise EnvironmentBuildError(f"could not start {argv[0]}: {exc.strerror}") from exc
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip())
        log(line.rstrip())
    if proc.wait() != 0:
        last = next((ln for ln in reversed(tail) if ln.strip()), "no output")
        raise EnvironmentBuildError(
            f"environment build failed at `{' '.join(argv[:4])} ...` (exit {proc.returncode}): {last.strip()}"
        )
