"""Ask an interpreter what it is, once, and remember the answer until its packages change.

Running ``pip freeze`` on every submit costs half a second; the answer only
changes when something is installed, which touches a site-packages folder.
So the probe result is cached (on this machine, keyed by the runner and the
interpreter path) and reused while the interpreter and the recorded site
folders keep their mtimes -- one ``stat`` call per folder, or one request to
a remote host's helper for all of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mltrain.environments.base import digest
from mltrain.errors import EnvironmentBuildError
from mltrain.hosts.runner import LOCAL, Runner, StartError

_PROBE = r"""
import json, site, sys, sysconfig
from importlib import metadata
dists = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata['Name']},
               key=str.lower)
dirs = [p for p in {*site.getsitepackages(), site.getusersitepackages(), sysconfig.get_paths()["purelib"]}]
print(json.dumps({"executable": sys.executable, "version": sys.version.split()[0],
                  "site_dirs": sorted(dirs), "freeze": "\n".join(dists)}))
"""


@dataclass(frozen=True)
class InterpreterInfo:
    executable: str
    version: str
    freeze: str
    site_dirs: tuple[str, ...]


def resolve_interpreter(path: str, runner: Runner = LOCAL) -> str:
    """An absolute path for ``path`` on the runner's machine (a bare name is looked up on PATH once, here)."""
    found, executable = runner.which(path)
    where = "" if runner is LOCAL else f" on {runner.name}"
    if not found:
        raise EnvironmentBuildError(
            f"interpreter {path!r} not found{where}; set environment.interpreter to an existing python"
        )
    if not executable:
        raise EnvironmentBuildError(f"interpreter {found}{where} is not executable")
    return found


def probe(interpreter: str, cache_dir: Path, *, refresh: bool = False, runner: Runner = LOCAL) -> InterpreterInfo:
    """What ``interpreter`` really runs and has installed (cached; see module docstring)."""
    path = resolve_interpreter(interpreter, runner)
    key = path if runner.shares_files else f"{runner.key}:{path}"
    cache_file = cache_dir / "interpreters" / f"{digest(key)[:24]}.json"
    if not refresh:
        try:
            cached = json.loads(cache_file.read_text())
            dirs = tuple(cached["site_dirs"])
            if [cached["own_mtime"], *cached["mtimes"]] == runner.mtimes([path, *dirs]):
                return InterpreterInfo(cached["executable"], cached["version"], cached["freeze"], dirs)
        except (OSError, ValueError, KeyError):
            pass
    try:
        result = runner.run([path, "-c", _PROBE], timeout=120)
    except StartError as exc:
        raise EnvironmentBuildError(f"could not run interpreter {path}: {exc}") from exc
    if result.returncode != 0:
        raise EnvironmentBuildError(f"interpreter {path} is not a working Python 3: {result.last_line()}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    dirs = tuple(data["site_dirs"])
    info = InterpreterInfo(data["executable"], data["version"], data["freeze"], dirs)
    own_mtime, *mtimes = runner.mtimes([path, *dirs])
    try:
        from mltrain.hosts.agent import write_atomic

        write_atomic(os.fspath(cache_file), json.dumps(data | {"own_mtime": own_mtime, "mtimes": mtimes}).encode())
    except OSError:
        pass  # a cache we cannot write only costs time
    return info
