"""environment=docker on a real engine: prebuilt images, generated Dockerfiles (through the proxy with the
host's CA bundle, and offline from a wheel folder), the user's own Dockerfile, failing builds, config errors."""

# ruff: noqa: F811  (the fixtures imported from dockertest are named as the test arguments)
from __future__ import annotations

import ssl
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, assert_one_line_error
from dockertest import BASE_IMAGE, LABEL, DockerProject, dproject, engine  # noqa: F401 (fixtures)

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


def _bridge_gateway(engine: Any) -> str:
    """The address containers on the default bridge (build steps too) reach this machine at."""
    container = engine.containers.run(BASE_IMAGE, ["sleep", "60"], detach=True, labels={LABEL: "gateway"})
    try:
        container.reload()
        return str(container.attrs["NetworkSettings"]["Gateway"])
    finally:
        container.remove(force=True)


def _self_signed(folder: Path, address: str) -> tuple[Path, Path]:
    """A certificate for ``address`` that signs itself: what a TLS-intercepting proxy looks like to pip."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mltrain test index")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "index-cert.pem", folder / "index-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def https_index(tmp_path: Path, engine: Any) -> Iterator[tuple[str, Path]]:
    """A package index holding mltrain-tiny 0.1, over HTTPS with a self-signed certificate, on the bridge's
    gateway: pip inside a build meets exactly what it meets behind a TLS-intercepting proxy."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    gateway = _bridge_gateway(engine)
    root = tmp_path / "index"
    wheel = make_wheel(root / "files")
    page = root / "simple" / "mltrain-tiny" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<html><body><a href="/files/{wheel.name}">{wheel.name}</a></body></html>\n')
    cert, key = _self_signed(tmp_path, gateway)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((gateway, 0), functools.partial(Quiet, directory=str(root)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://{gateway}:{server.server_address[1]}/simple", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_tls_failure_in_the_build_names_ca_bundle(dproject: DockerProject, https_index: tuple[str, Path]) -> None:
    """pip failing a certificate check in the build is said so, naming environment.ca_bundle; which then works."""
    url, cert = https_index
    dproject.write("tiny.py", "import mltrain_tiny\nprint('tiny', mltrain_tiny.VALUE)\n")
    overrides = ("script=tiny.py", "environment.packages=['mltrain-tiny==0.1']", f"environment.pip_index_url={url}",
                 "environment.pip_args=[--retries,'0']")
    result = dproject.submit(*overrides, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.splitlines()[-1]
    for fragment in ("mltrain: error: docker build of mltrain-env:", "a TLS certificate check failed inside the build",
                     "CERTIFICATE_VERIFY_FAILED", "set environment.ca_bundle="):
        assert fragment in error, error
    assert "\x1b" not in error  # the builder's colours stay out of the one line
    assert dproject.record()["status"] == "Failed"

    fixed = dproject.submit(*overrides, f"environment.ca_bundle={cert}", timeout=300, check=True)
    assert "tiny 42" in fixed.stdout


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
