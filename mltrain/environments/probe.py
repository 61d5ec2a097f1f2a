"""Ask an interpreter what it is, once, and remember the answer until its packages change.

Running ``pip freeze`` on every submit costs half a second; the answer only
changes when something is installed, which touches a site-packages folder.
So the probe result is cached keyed by the interpreter path and reused while
the recorded site folders keep their mtimes (a few ``stat`` calls).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mltrain.environments.base import digest
from mltrain.errors import EnvironmentBuildError

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


def resolve_interpreter(path: str) -> str:
    """An absolute path for ``path`` (a bare name is looked up on PATH once, here)."""
    found = path if os.path.isabs(path) else shutil.which(path)
    if not found or not os.path.exists(found):
        raise EnvironmentBuildError(
            f"interpreter {path!r} not found; set environment.interpreter to an existing python"
        )
    if not os.access(found, os.X_OK):
        raise EnvironmentBuildError(f"interpreter {found} is not executable")
    return os.path.abspath(found)


def _mtimes(dirs: tuple[str, ...]) -> list[int]:
    stamps = []
    for folder in dirs:
        try:
            stamps.append(os.stat(folder).st_mtime_ns)
        except OSError:
            stamps.append(-1)
    return stamps


def probe(interpreter: str, cache_dir: Path, *, refresh: bool = False) -> InterpreterInfo:
    """What ``interpreter`` really runs and has installed (cached; see module docstring)."""
    path = resolve_interpreter(interpreter)
    cache_file = cache_dir / "interpreters" / f"{digest(path)[:24]}.json"
    try:
        own_mtime = os.stat(path).st_mtime_ns
    except OSError:
        own_mtime = -1
    if not refresh:
        try:
            cached = json.loads(cache_file.read_text())
            dirs = tuple(cached["site_dirs"])
            if cached["own_mtime"] == own_mtime and cached["mtimes"] == _mtimes(dirs):
                return InterpreterInfo(cached["executable"], cached["version"], cached["freeze"], dirs)
        except (OSError, ValueError, KeyError):
            pass
    try:
        result = subprocess.run(
            [path, "-c", _PROBE], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentBuildError(f"could not run interpreter {path}: {exc}") from exc
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentBuildError(f"interpreter {path} is not a working Python 3: {last}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    dirs = tuple(data["site_dirs"])
    info = InterpreterInfo(data["executable"], data["version"], data["freeze"], dirs)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data | {"own_mtime": own_mtime, "mtimes": _mtimes(dirs)}))
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a cache we cannot write only costs time
    return info
