"""environment=docker on a real engine: prebuilt images, generated Dockerfiles (through the proxy with the
host's CA bundle, and offline from a wheel folder), the user's own Dockerfile, failing builds, config errors."""

# ruff: noqa: F811  (the fixtures imported from dockertest are named as the test arguments)
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from conftest import Project, assert_one_line_error
from dockertest import BASE_IMAGE, DockerProject, dproject, engine  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


def make_wheel(folder: Path, name: str = "mltrain_tiny", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel, made by hand (no network, no build backend)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": "VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: mltrain-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def test_prebuilt_image_is_used_as_is(dproject: DockerProject) -> None:
    dproject.write("where.py", "import sys\nprint('python', sys.executable, sys.version_info[:2])\n")
    result = dproject.submit("script=where.py", build=False, check=True)
    assert "python /usr/bin/python3" in result.stdout
    assert dproject.images() == []
    run_dir = dproject.workspace / "runs" / str(dproject.record()["id"])
    assert "pip==" in (run_dir / "environment.txt").read_text()  # what the image holds, recorded


def test_env_is_baked_into_the_generated_image(dproject: DockerProject) -> None:
    dproject.write("env.py", "import os\nprint('greeting', os.environ.get('GREETING'))\n")
    result = dproject.submit("script=env.py", '+environment.env.GREETING="it\'s $HOME \\ \\"x\\""', check=True)
    assert "greeting it's $HOME \\ \"x\"" in result.stdout
    (image,) = dproject.images()
    assert image.labels["mltrain.managed"] == "true"
    assert image.tags[0].startswith("mltrain-env:")


@pytest.mark.slow
def test_pip_install_from_pypi_through_the_proxy_with_the_ca_bundle(dproject: DockerProject) -> None:
    dproject.write("six_version.py", "import six, sys\nprint('six', six.__version__, sys.executable)\n")
    result = dproject.submit("script=six_version.py", "environment.packages=['six==1.17.0']",
                             f"environment.ca_bundle={HOST_CA}", timeout=300, check=True)
    assert "six 1.17.0 /opt/mltrain/venv/bin/python" in result.stdout
    run_dir = dproject.workspace / "runs" / str(dproject.record()["id"])
    assert "six==1.17.0" in (run_dir / "environment.txt").read_text()


def test_offline_build_from_a_wheel_folder(dproject: DockerProject) -> None:
    make_wheel(dproject.root / "wheels")
    dproject.write("tiny.py", "import mltrain_tiny\nprint('tiny', mltrain_tiny.VALUE)\n")
    overrides = ("script=tiny.py", "environment.packages=['mltrain-tiny==0.1']", "environment.wheels=wheels",
                 "environment.pip_args=[--no-index]")
    result = dproject.submit(*overrides, check=True)
    assert "tiny 42" in result.stdout
    assert "--no-index" in result.stderr  # the build output streamed to the terminal
    images = dproject.images()
    assert len(images) == 1
    make_wheel(dproject.root / "wheels", version="0.2")  # a new wheel in the folder: a new image
    dproject.submit(*overrides, check=True)
    assert len(dproject.images()) == 2


def test_failing_build_fails_the_run_with_the_step_and_the_tail(dproject: DockerProject) -> None:
    dproject.write(
        "docker/Dockerfile",
        f"FROM {BASE_IMAGE}\nRUN echo preparing\nRUN echo about to fail && exit 3\n",
    )
    result = dproject.submit("script=train.py", build="docker/Dockerfile")
    for image in dproject.engine.images.list(all=True, filters={"dangling": True}):  # the failed build's layer
        if "echo preparing" in " ".join(image.attrs.get("ContainerConfig", {}).get("Cmd") or []):
            dproject.engine.images.remove(image.id, force=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "about to fail" in result.stderr  # the build output streamed as it came
    error = result.stderr.splitlines()[-1]  # then the one line of the error
    for fragment in ("mltrain: error: docker build of mltrain-env:", "failed at Step 3/4 : RUN echo about to fail",
                     "non-zero code: 3", "last output: about to fail"):
        assert fragment in error, error
    record = dproject.record()
    assert record["status"] == "Failed"
    assert "Step 3/" in str(record["reason"])
    assert "about to fail" in dproject.log(str(record["id"]))


def test_own_dockerfile_with_context_and_build_args(dproject: DockerProject) -> None:
    dproject.write("docker/Dockerfile", f"FROM {BASE_IMAGE}\nARG FLAVOUR\nCOPY note.txt /etc/note.txt\n"
                                        "ENV FLAVOUR=$FLAVOUR\n")
    dproject.write("docker/note.txt", "from the context")
    dproject.write("show.py", "import os\nprint(open('/etc/note.txt').read(), os.environ['FLAVOUR'])\n")
    overrides = ("script=show.py", "+environment.build_args.FLAVOUR=vanilla")
    result = dproject.submit(*overrides, build="docker/Dockerfile", check=True)
    assert "from the context vanilla" in result.stdout
    dproject.write("docker/note.txt", "changed")
    result = dproject.submit(*overrides, build="docker/Dockerfile", check=True)
    assert "changed vanilla" in result.stdout  # a context file changed: rebuilt
    assert len(dproject.images()) == 2


@pytest.mark.parametrize(("overrides", "fragments"), [
    (["environment=docker"], ["exactly one of environment.image"]),
    (["environment=docker_python", f"environment.image={BASE_IMAGE}"], ["exactly one of", "base_image", "image"]),
    (["environment=docker", f"environment.image={BASE_IMAGE}", "environment.packages=[six]"],
     ["environment.packages has no effect with environment.image", "environment.base_image"]),
    (["environment=docker_python", "+environment.build_args.A=1"],
     ["environment.build_args has no effect with environment.base_image"]),
])
def test_config_errors_are_one_line(project: Project, overrides: list[str], fragments: list[str]) -> None:
    result = project.run("script=train.py", "compute=docker", *overrides)
    assert_one_line_error(result, *fragments)


def test_curated_presets_compose(project: Project) -> None:
    for preset, fragment in (("docker_python", "python:3.11-slim"), ("docker_sklearn", "scikit-learn=="),
                             ("sklearn", "scikit-learn==")):
        shown = project.run("script=train.py", f"environment={preset}", "--cfg", "job", check=True).stdout
        assert fragment in shown, shown
