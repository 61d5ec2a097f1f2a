"""mltrain installed the two ways users install it -- from a wheel, and editable (``pip install -e .``, what
``make install`` does) -- each in a venv of its own, built once per test session.

A venv here holds only mltrain: its dependencies come from the test's own venv through a ``.pth`` (a plain
path entry, so none of that venv's own ``.pth`` files -- its editable mltrain -- take effect). Building
either takes seconds and needs no index beyond the build requirements pip already has cached.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from buildtest import checkout_build_lock

ROOT = Path(__file__).resolve().parents[2]
MODES = ("wheel", "editable")


def build_wheel(dist: Path) -> Path:
    with checkout_build_lock():
        subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
                       check=True, capture_output=True, timeout=600)
    (wheel,) = dist.glob("mltrain-*.whl")
    return wheel


def make_venv(folder: Path, mode: str, wheel: Path | None = None) -> Path:
    """A venv with mltrain installed by ``mode``; returns its python."""
    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "_mltrain_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    target = ["-e", str(ROOT)] if mode == "editable" else [str(wheel)]
    with checkout_build_lock():
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                        "--disable-pip-version-check", *target], check=True, capture_output=True, timeout=600)
    return python


JOB_DEPS = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "PyYAML", "packaging")
DOCKERFILE = """FROM {base}
COPY wheels /wheels
RUN python3 -m venv /opt/app && /opt/app/bin/pip install --quiet --no-index --find-links /wheels {deps} \\
 && /opt/app/bin/pip install --quiet --no-index --no-deps /wheels/{mltrain}
"""


def job_image(base: str, wheel: Path, folder: Path) -> str:
    """An image for a Hydra app's jobs in containers: ``base`` plus a venv (``/opt/app``) with Hydra and
    mltrain (``--no-deps``: a job needs only its Hydra callback). Built from wheels of the versions this venv
    has -- taken from pip's cache, ``antlr4-python3-runtime`` (no wheel on the index) built locally -- and
    tagged by their hashes, so it is built once per machine."""
    import hashlib
    from importlib.metadata import version

    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in JOB_DEPS]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "-w", str(wheels), *pins],
                   check=True, capture_output=True, timeout=600)
    (wheels / wheel.name).write_bytes(wheel.read_bytes())
    digest = hashlib.sha256(base.encode())
    for path in sorted(wheels.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    tag = f"mltrain-test/hydra-job:{digest.hexdigest()[:12]}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode != 0:
        (folder / "Dockerfile").write_text(DOCKERFILE.format(base=base, deps=" ".join(pins), mltrain=wheel.name))
        subprocess.run(["docker", "build", "--quiet", "-t", tag, str(folder)], check=True, capture_output=True,
                       timeout=900)
    return tag
