"""``environment=venv``: a virtualenv built once per content hash and reused by every later run.

It is built on the target's machine (``target.runner()``): under the local
cache folder for local runs, under ``<remote_dir>/cache`` on an SSH host.
The folder name is the fingerprint, so a cache hit is one read of the
completion marker. Builds take a lock (two sweep trials asking for the same
environment build it once) and happen in place: a virtualenv cannot be
renamed after it is built (its scripts hold absolute paths), so an unfinished
build is recognised by the missing marker and started over.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mltrain.config.groups import EnvironmentConfig
from mltrain.environments.base import Environment, LogFn, PreparedEnvironment, Requirements, digest
from mltrain.environments.probe import probe, resolve_interpreter
from mltrain.errors import ConfigError, EnvironmentBuildError
from mltrain.hosts.runner import LOCAL, Runner, StartError
from mltrain.util import progress

if TYPE_CHECKING:
    from mltrain.targets.base import Executor

MARKER = ".mltrain-complete"
INSTALLERS = ("auto", "uv", "pip")


@dataclass
class VenvEnvironment(EnvironmentConfig):
    """A virtualenv built once per content hash (packages + requirements) and reused."""

    type: str = "venv"
    python: str | None = None  # base interpreter; default: the one running mltrain
    packages: list[str] = field(default_factory=list)
    requirements: str | None = None  # path relative to source_dir
    pip_args: list[str] = field(default_factory=list)
    installer: str = "auto"  # auto (uv when installed, else pip) | uv | pip
    system_site_packages: bool = False

    def check(self) -> None:
        if self.installer not in INSTALLERS:
            raise ConfigError(f"environment.installer={self.installer!r}: choose one of {', '.join(INSTALLERS)}")


def find_uv() -> str | None:
    return LOCAL.find_tool("uv")


class Venv(Environment):
    kind = "venv"
    config_class = VenvEnvironment
    config: VenvEnvironment
    _fingerprints: dict[str, str]

    def _base_python(self, runner: Runner) -> str:
        return resolve_interpreter(self.config.python or runner.default_python(), runner)

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

    def fingerprint(self, target: Executor | None = None) -> str:
        runner = self.runner(target)
        cache = self.__dict__.setdefault("_fingerprints", {})
        if runner.key not in cache:
            _, requirements = self._requirements()
            cache[runner.key] = digest({
                "kind": self.kind,
                "python": runner.realpath(self._base_python(runner)),
                "packages": sorted(self.config.packages),
                "requirements": requirements,
                "pip_args": list(self.config.pip_args),
                "system_site_packages": self.config.system_site_packages,
            })
        return str(cache[runner.key])

    def directory(self, target: Executor | None = None) -> str:
        runner = self.runner(target)
        return posixpath.join(runner.env_root(self.cache_dir), "envs", f"venv-{self.fingerprint(target)[:24]}")

    def is_prepared(self, target: Executor | None) -> bool:
        return self.runner(target).read_text(posixpath.join(self.directory(target), MARKER)) is not None

    def _prepared(self, folder: str, marker_text: str, target: Executor | None) -> PreparedEnvironment:
        return PreparedEnvironment(
            interpreter=posixpath.join(folder, "bin", "python"),
            fingerprint=self.fingerprint(target),
            description=f"venv: {folder}",
            freeze=json.loads(marker_text).get("freeze", ""),
        )

    def prepare(self, log: LogFn, target: Executor | None) -> PreparedEnvironment:
        runner = self.runner(target)
        folder = self.directory(target)
        marker = posixpath.join(folder, MARKER)
        text = runner.read_text(marker)
        if text is not None:
            return self._prepared(folder, text, target)
        runner.makedirs(posixpath.dirname(folder))
        with runner.lock(folder + ".lock"):
            text = runner.read_text(marker)
            if text is not None:  # built by someone else while we waited
                return self._prepared(folder, text, target)
            runner.remove_tree(folder)
            try:
                self._build(folder, log, runner)
                freeze = probe(posixpath.join(folder, "bin", "python"), self.cache_dir, refresh=True,
                               runner=runner).freeze
            except BaseException:
                runner.remove_tree(folder)
                raise
            text = json.dumps({"fingerprint": self.fingerprint(target), "freeze": freeze})
            runner.write_text(marker, text)
        return self._prepared(folder, text, target)

    def _build(self, folder: str, log: LogFn, runner: Runner) -> None:
        base = self._base_python(runner)
        requirements, text = self._requirements()
        installer = self.config.installer
        uv = runner.find_tool("uv") if installer in ("auto", "uv") else None
        if installer == "uv" and uv is None:
            raise EnvironmentBuildError(
                f"environment.installer=uv but uv is not installed on {runner.name}; pip install uv, or use pip")
        if requirements is not None and not runner.shares_files:  # the host cannot see our file: send its text
            remote = f"{folder}.requirements.txt"
            runner.write_text(remote, text)
            requirements = Path(remote)
        packages = [*self.config.packages, *(["-r", str(requirements)] if requirements else [])]
        python = posixpath.join(folder, "bin", "python")
        system = ["--system-site-packages"] if self.config.system_site_packages else []
        if uv:
            steps = [("uv venv", [uv, "venv", "--quiet", *system, "--python", base, folder])]
            if packages:
                steps.append(("uv pip install",
                              [uv, "pip", "install", "--python", python, *self.config.pip_args, *packages]))
        else:
            steps = [("python -m venv", [base, "-m", "venv", *system, folder])]
            if packages:
                steps.append(("pip install", [python, "-m", "pip", "install", "--disable-pip-version-check",
                                              *self.config.pip_args, *packages]))
        where = "" if runner.shares_files else f" on {runner.name}"
        name = f"venv {posixpath.basename(folder)}{where}"
        log(f"building {name} ({'uv' if uv else 'pip'}): {' '.join(self.config.packages) or '-'}")
        with progress.current().task(f"building {name}") as task:
            for number, (what, step) in enumerate(steps, 1):
                task.step(f"building venv{where}: step {number}/{len(steps)}, {what}")
                _run_step(step, log, runner)
            task.close(f"built {name}")

    def requirements(self) -> Requirements:
        """The packages and the requirements file's lines (the file's own options, ``-r``, are refused)."""
        _, text = self._requirements()
        lines = [line.split(" #")[0].strip() for line in text.splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        for line in lines:
            if line.startswith("-"):
                raise ConfigError(f"environment.requirements: {line!r}: options in a requirements file cannot be "
                                  "handed to a target that installs the packages itself; list packages only "
                                  "(pip options go in environment.pip_args)")
        if self.config.python or self.config.system_site_packages:
            raise ConfigError("environment.python / environment.system_site_packages: this target builds the "
                              "virtualenv itself with its nodes' Python; leave them unset")
        return Requirements(packages=(*self.config.packages, *lines), pip_args=tuple(self.config.pip_args))

    def describe(self) -> str:
        return f"venv ({len(self.config.packages)} packages{', requirements' if self.config.requirements else ''})"


def _run_step(argv: list[str], log: LogFn, runner: Runner) -> None:
    try:
        result = runner.run(argv, on_line=log, merge=True)
    except StartError as exc:
        raise EnvironmentBuildError(f"could not start {argv[0]}: {exc}") from exc
    if result.returncode != 0:
        raise EnvironmentBuildError(
            f"environment build failed at `{' '.join(argv[:4])} ...` (exit {result.returncode}): {result.last_line()}"
        )
