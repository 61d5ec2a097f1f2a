"""``environment=docker``: a container image, made one of three ways, and built once per content hash.

* ``image``: a prebuilt image, used as is (pulled when the engine lacks it).
* ``base_image``: mltrain writes the Dockerfile -- ``FROM`` the base, ``ENV``
  the variables, and when there are packages a virtualenv at
  ``/opt/mltrain/venv`` (with the base's own packages visible) that pip
  installs into. A venv because Debian-based images refuse system-wide pip
  installs (PEP 668), and ``--system-site-packages`` so an image that ships
  torch or CUDA libraries keeps them.
* ``dockerfile``: the user's own, with its build context.

The tag is ``mltrain-env:<hash>`` where the hash covers the Dockerfile text
and the content of every file the build reads, so a second run (and
``mltrain plan``) finds the image with one inspect and builds nothing, and
any change that matters builds a new image. The base image's tag is taken at
its word: a moved ``python:3.11-slim`` does not rebuild (pin a digest for that).

What the image holds is asked once per image id, by running its interpreter
(``PreparedEnvironment.freeze``), and remembered in the cache folder.

The engine is the target's (``target.docker_engine()``: the local or a remote
engine, or an SSH host's through its tunnel), reached through the ``Engine``
the target shares (``mltrain.targets.docker.engine.shared_engine``). A cached
run costs one image inspect, remembered for the plan. Only a build imports
docker-py, for its ``.dockerignore`` rules and context tar.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import tempfile
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mltrain.config.groups import EnvironmentConfig
from mltrain.environments.base import Environment, LogFn, PreparedEnvironment, digest
from mltrain.errors import ConfigError, EnvironmentBuildError, MltrainError
from mltrain.targets.docker.engine import Engine, EngineError, shared_engine
from mltrain.targets.docker.util import engine_error
from mltrain.util import progress

if TYPE_CHECKING:
    from mltrain.targets.base import Executor

REPOSITORY = "mltrain-env"
VENV = "/opt/mltrain/venv"
CA_FILE = "/etc/mltrain/ca-bundle.crt"
REQUIREMENTS_FILE = "/etc/mltrain/requirements.txt"
WHEELS_DIR = "/opt/mltrain/wheels"
TAIL_LINES = 3
PROBE_TIMEOUT = 120.0  # seconds for the interpreter inside a new image to describe itself
# what pip, curl, openssl and friends print when a certificate check fails (a TLS-intercepting proxy, a private CA)
TLS_FAILURE = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|SSLCertVerificationError|"
                         r"\[SSL[:\]]|SSL: |SSLError|unable to get local issuer certificate|self[- ]signed certificate|"
                         r"server certificate verification failed|x509: certificate", re.IGNORECASE)
TLS_DETAIL = re.compile(r"\[SSL: [A-Z_]+\][^'\")(]*|certificate verify failed[^'\")(]*|x509: [^'\")(]*")
HOST_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
SOURCES = ("image", "base_image", "dockerfile")


@dataclass
class DockerEnvironment(EnvironmentConfig):
    """A container image: prebuilt (``image``), generated (``base_image`` + pip), or the user's ``dockerfile``.

    Built images are tagged by content hash and reused; exactly one of
    ``image``, ``base_image``, ``dockerfile`` must be set.
    """

    type: str = "docker"
    image: str | None = None  # used as is (pulled if missing)
    base_image: str | None = None  # mltrain writes the Dockerfile: FROM base_image + ENV + pip install
    packages: list[str] = field(default_factory=list)
    requirements: str | None = None  # relative to source_dir
    env: dict[str, str] = field(default_factory=dict)  # ENV baked into the image
    dockerfile: str | None = None  # the user's own, relative to source_dir
    context: str | None = None  # build context for ``dockerfile`` (default: the Dockerfile's folder)
    build_args: dict[str, str] = field(default_factory=dict)
    python: str = "python3"  # interpreter inside the image
    pip_args: list[str] = field(default_factory=list)
    pip_index_url: str | None = None  # a private index / mirror
    ca_bundle: str | None = None  # host CA bundle trusted during the build (TLS-intercepting proxies)
    wheels: str | None = None  # folder of wheels (relative to source_dir) copied into the build, --find-links
    labels: dict[str, str] = field(default_factory=dict)  # on the built image

    def check(self) -> None:
        """Exactly one way of making the image; no key that this way would silently ignore."""
        sources = [k for k, v in (("image", self.image), ("base_image", self.base_image),
                                  ("dockerfile", self.dockerfile)) if v]
        if len(sources) != 1:
            raise ConfigError(
                "environment: set exactly one of environment.image (prebuilt), environment.base_image "
                f"(mltrain writes the Dockerfile) or environment.dockerfile (your own); got {sources or 'none'}"
            )
        source = sources[0]
        used = {"packages": self.packages, "requirements": self.requirements, "env": self.env,
                "pip_args": self.pip_args, "pip_index_url": self.pip_index_url, "ca_bundle": self.ca_bundle,
                "wheels": self.wheels, "context": self.context, "build_args": self.build_args, "labels": self.labels}
        for key, allowed in ONLY_WITH.items():
            if used[key] and source not in allowed:
                hint = (
                    "do that in your Dockerfile" if source == "dockerfile"
                    else f"it needs environment.{' or environment.'.join(allowed)} instead of environment.{source}"
                )
                raise ConfigError(f"environment.{key} has no effect with environment.{source}; {hint}")


_GENERATED, _OWN = ("base_image",), ("dockerfile",)
ONLY_WITH: dict[str, tuple[str, ...]] = {  # keys that act only with some ways of making the image
    "packages": _GENERATED, "requirements": _GENERATED, "env": _GENERATED, "pip_args": _GENERATED,
    "pip_index_url": _GENERATED, "ca_bundle": _GENERATED, "wheels": _GENERATED,
    "context": _OWN, "build_args": _OWN, "labels": _GENERATED + _OWN,
}


class DockerImage(Environment):
    kind = "docker"
    config_class = DockerEnvironment
    config: DockerEnvironment
    provides_image = True
    _fingerprint: str | None = None
    _found: tuple[Engine, str] | None = None  # (engine, image id) of the last lookup that found the image

    # ------------------------------------------------------------ what it is
    @property
    def mode(self) -> str:
        cfg = self.config
        return "image" if cfg.image else ("dockerfile" if cfg.dockerfile else "base_image")

    def _source_path(self, key: str, value: str) -> Path:
        path = (self.source_dir / os.path.expanduser(value)).absolute()
        if not path.exists():
            raise ConfigError(f"environment.{key}: {path} does not exist; give a path relative to source_dir")
        return path

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if self.mode == "image":
                self._fingerprint = digest({"kind": self.kind, "image": self.config.image})
            else:
                dockerfile, files = self._recipe()
                self._fingerprint = digest({
                    "kind": self.kind, "dockerfile": dockerfile, "files": files,
                    "build_args": dict(self.config.build_args), "labels": dict(self.config.labels),
                })
        return self._fingerprint

    def tag(self) -> str:
        """The image the run uses: the prebuilt one, or ``mltrain-env:<hash>``."""
        return str(self.config.image) if self.mode == "image" else f"{REPOSITORY}:{self.fingerprint()[:32]}"

    def describe(self) -> str:
        cfg = self.config
        if self.mode == "image":
            return f"docker image {cfg.image}"
        if self.mode == "dockerfile":
            return f"docker build of {cfg.dockerfile}"
        extra = f" + {len(cfg.packages)} packages" if cfg.packages else ""
        extra += " + requirements" if cfg.requirements else ""
        return f"docker image FROM {cfg.base_image}{extra}"

    @property
    def _makes_venv(self) -> bool:
        return self.mode == "base_image" and bool(self.config.packages or self.config.requirements)

    # ---------------------------------------------------------- the recipe
    def _recipe(self) -> tuple[str, dict[str, str]]:
        """The Dockerfile text and {file in the build: content hash} -- everything the image depends on."""
        if self.mode == "dockerfile":
            return self._own_recipe()
        return self._generated_dockerfile(), self._generated_files()

    def _generated_dockerfile(self) -> str:
        cfg = self.config
        lines = [f"FROM {cfg.base_image}"]
        for name, value in sorted(cfg.env.items()):
            if not str(value).isprintable():
                raise ConfigError(f"environment.env.{name}: a value cannot hold a newline or control character")
            lines.append(f"ENV {name}={_quote(value)}")
        if not self._makes_venv:
            return "\n".join(lines) + "\n"
        if cfg.ca_bundle:
            lines.append(f"COPY ca-bundle.crt {CA_FILE}")
        if cfg.requirements:
            lines.append(f"COPY requirements.txt {REQUIREMENTS_FILE}")
        if cfg.wheels:
            lines.append(f"COPY wheels {WHEELS_DIR}")
        python = shlex.quote(cfg.python)
        venv_python = f"{VENV}/bin/python"
        make_venv = (
            f"{python} -m venv --system-site-packages --without-pip {VENV} && "
            f"{{ {venv_python} -m pip --version >/dev/null 2>&1 || {venv_python} -m ensurepip --default-pip; }}"
        )
        env = []
        if cfg.ca_bundle:
            env += [f"{k}={CA_FILE}" for k in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")]
        if cfg.pip_index_url:
            env.append(f"PIP_INDEX_URL={cfg.pip_index_url}")
        install = ["env", *env, venv_python, "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
                   "--no-input"]
        if cfg.wheels:
            install += ["--find-links", WHEELS_DIR]
        install += [*cfg.pip_args, *cfg.packages]
        if cfg.requirements:
            install += ["-r", REQUIREMENTS_FILE]
        lines.append(f"RUN {json.dumps(['/bin/sh', '-c', make_venv])}")
        lines.append(f"RUN {json.dumps(['/bin/sh', '-c', shlex.join(install)])}")
        return "\n".join(lines) + "\n"

    def _generated_files(self) -> dict[str, str]:
        """Files copied into the generated build (the CA bundle is transport, not content: not hashed)."""
        cfg = self.config
        files: dict[str, str] = {}
        if not self._makes_venv:
            return files
        if cfg.requirements:
            files["requirements.txt"] = _hash_file(self._source_path("requirements", cfg.requirements))
        if cfg.wheels:
            folder = self._source_path("wheels", cfg.wheels)
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                files[f"wheels/{path.relative_to(folder).as_posix()}"] = _hash_file(path)
        return files

    def _own_paths(self) -> tuple[Path, Path]:
        assert self.config.dockerfile is not None  # mode "dockerfile"
        dockerfile = self._source_path("dockerfile", self.config.dockerfile)
        context = self._source_path("context", self.config.context) if self.config.context else dockerfile.parent
        if not context.is_dir():
            raise ConfigError(f"environment.context: {context} is not a folder")
        return dockerfile, context

    def _ignore_patterns(self, context: Path) -> list[str]:
        ignore = context / ".dockerignore"
        patterns = [ln.strip() for ln in ignore.read_text().splitlines()] if ignore.exists() else []
        return [p for p in patterns if p and not p.startswith("#")]

    def _own_recipe(self) -> tuple[str, dict[str, str]]:
        from docker.utils.build import exclude_paths  # docker-py: its .dockerignore rules, exactly

        dockerfile, context = self._own_paths()
        rel_dockerfile = os.path.relpath(dockerfile, context)
        files: dict[str, str] = {}
        for rel in sorted(exclude_paths(str(context), self._ignore_patterns(context), dockerfile=rel_dockerfile)):
            path = context / rel
            if path.is_file() and not path.is_symlink():
                files[rel] = _hash_file(path)
            elif path.is_symlink():
                files[rel] = "link:" + os.readlink(path)
        return dockerfile.read_text(), files

    # ------------------------------------------------------------ preparing
    def _engine(self, target: Executor | None) -> Engine:
        """The engine ``target`` runs its containers on (the one it uses itself, shared)."""
        engine = target.docker_engine() if target is not None else None
        if engine is None:
            where = f"compute={target.kind}" if target is not None else "this machine, without a target,"
            raise ConfigError(f"environment=docker makes a container image, which {where} has no Docker engine "
                              "to run; use compute=docker, or compute=ssh to a host with Docker")
        return shared_engine(engine)

    def is_prepared(self, target: Executor | None) -> bool:
        engine = self._engine(target)
        if self._found is not None and self._found[0] is engine:
            return True  # prepare() just found or made it: no second inspect
        return self._image_id(engine) is not None

    def _image_id(self, engine: Engine) -> str | None:
        try:
            attrs = engine.inspect_image(self.tag())
        except Exception as exc:
            raise engine_error(f"look up image {self.tag()}", exc) from exc
        if attrs is None:
            return None
        self._found = (engine, str(attrs["Id"]))
        return str(attrs["Id"])

    def prepare(self, log: LogFn, target: Executor | None) -> PreparedEnvironment:
        engine = self._engine(target)
        tag = self.tag()
        image_id = self._image_id(engine)
        if image_id is not None:
            log(f"environment: image {tag} (cached)")
        elif self.mode == "image":
            image_id = self._pull(engine, log)
        else:
            image_id = self._build_locked(engine, log)
        self._found = (engine, image_id)
        info = self._probe(engine, image_id)
        return PreparedEnvironment(
            interpreter=info["executable"], fingerprint=self.fingerprint(),
            description=f"{self.describe()}: {tag} ({image_id[:19]}, Python {info['version']})",
            freeze=info["freeze"], image=tag,
        )

    def _pull(self, engine: Engine, log: LogFn) -> str:
        image = str(self.config.image)
        log(f"environment: pulling {image}")
        repository, tag = parse_repository_tag(image)
        try:
            for event in engine.pull(repository, tag or "latest"):
                if "error" in event:
                    raise EnvironmentBuildError(
                        f"cannot pull image {image} ({_line(event['error'])}); build it on the engine first "
                        "or set environment.image to an image the engine has"
                    )
                if event.get("status") and "progress" not in event:
                    log(f"  {event.get('id', '')} {event['status']}".rstrip())
        except EnvironmentBuildError:
            raise
        except Exception as exc:
            if isinstance(exc, MltrainError) and not isinstance(exc, EngineError):
                raise  # unreachable: that one line says how to start an engine
            raise EnvironmentBuildError(
                f"cannot pull image {image} ({_line(str(exc))}); build it on the engine first "
                "or set environment.image to an image the engine has"
            ) from exc
        image_id = self._image_id(engine)
        if image_id is None:
            raise EnvironmentBuildError(f"pulled image {image} but the engine does not list it; pull it by hand")
        return image_id

    def _build_locked(self, engine: Engine, log: LogFn) -> str:
        """Build under a file lock: two runs wanting the same image build it once."""
        locks = self.cache_dir / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"docker-{self.fingerprint()[:32]}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            image_id = self._image_id(engine)
            if image_id is not None:
                log(f"environment: image {self.tag()} (built by another run)")
                return image_id
            return self._build(engine, log)

    def _build(self, engine: Engine, log: LogFn) -> str:
        cfg = self.config
        labels = {"mltrain.environment": self.fingerprint(), "mltrain.managed": "true", **cfg.labels}
        label_line = "LABEL " + " ".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(labels.items()))
        log(f"environment: building {self.tag()} ({self.describe()})")
        with tempfile.TemporaryDirectory(prefix="mltrain-build-") as tmp:
            if self.mode == "dockerfile":
                # The labels go in as one LABEL line of a copy of the Dockerfile (the build API's
                # `labels` adds one step per label); docker-py sends a Dockerfile outside the context along.
                dockerfile, context = self._own_paths()
                path, name = str(context), os.path.join(tmp, "Dockerfile")
                Path(name).write_text(dockerfile.read_text().rstrip("\\\n") + "\n" + label_line + "\n")
            else:
                path, name = tmp, "Dockerfile"
                self._write_context(Path(tmp), label_line)
            try:
                with tempfile.TemporaryFile() as archive:
                    dockerfile_name = self._context_tar(path, name, archive)
                    size = archive.tell()
                    archive.seek(0)
                    events = engine.build(archive, size, tag=self.tag(), dockerfile=dockerfile_name,
                                          buildargs=dict(cfg.build_args) or None)
                    with progress.current().task(f"building image {self.tag()}") as task:
                        image_id = _follow_build(events, log, self.tag(), self._tls_hint(),
                                                 on_step=lambda step: task.step(f"building image: {_line(step, 80)}"))
                        task.close(f"built image {self.tag()}")
            except EnvironmentBuildError:
                raise
            except Exception as exc:
                raise engine_error(f"build image {self.tag()}", exc) from exc
        found = self._image_id(engine)
        if found is None:
            raise EnvironmentBuildError(f"docker build of {self.tag()} reported success but made no image "
                                        f"({image_id or 'no id'}); build it by hand to see why")
        return found

    def _tls_hint(self) -> str:
        """What to do when a certificate check fails inside the build: the knob is ``environment.ca_bundle``."""
        bundle = next((b for b in HOST_BUNDLES if os.path.isfile(b)), HOST_BUNDLES[0])
        if self.mode == "dockerfile":
            return ("environment.ca_bundle applies to mltrain's own builds (environment.base_image); in your "
                    "Dockerfile COPY the host's CA bundle in and point PIP_CERT / SSL_CERT_FILE at it")
        if self.config.ca_bundle:
            return (f"environment.ca_bundle={self.config.ca_bundle} is set but does not trust that server; point "
                    "it at a bundle holding your proxy's (or index's) CA")
        return (f"behind a TLS-intercepting proxy or with a private index, set environment.ca_bundle={bundle} "
                "(this host's CA bundle, or one holding the proxy's or index's CA)")

    def _context_tar(self, path: str, dockerfile: str, out: IO[bytes]) -> str:
        """Write the build context of ``path`` as a tar to ``out`` (``.dockerignore`` applied, as docker-py and
        the docker CLI do); a Dockerfile outside it goes in under a unique name, which is returned."""
        from docker.utils.build import tar

        context = Path(path)
        extra: tuple[str | None, str | None] = (None, None)
        if os.path.isabs(dockerfile) and not Path(dockerfile).is_relative_to(context):
            extra = (f".mltrain.Dockerfile.{self.fingerprint()[:16]}", Path(dockerfile).read_text())
            dockerfile = extra[0]
        patterns = self._ignore_patterns(context) if self.mode == "dockerfile" else []
        tar(str(context), exclude=patterns, dockerfile=extra, fileobj=out)
        out.seek(0, os.SEEK_END)
        return dockerfile

    def _write_context(self, folder: Path, label_line: str) -> None:
        import shutil

        cfg = self.config
        (folder / "Dockerfile").write_text(self._generated_dockerfile() + label_line + "\n")
        if not self._makes_venv:
            return
        if cfg.ca_bundle:
            bundle = Path(os.path.expanduser(cfg.ca_bundle))
            if not bundle.is_file():
                raise ConfigError(f"environment.ca_bundle: {bundle} is not a file; "
                                  "give the host's CA bundle, e.g. /etc/ssl/certs/ca-certificates.crt")
            shutil.copyfile(bundle, folder / "ca-bundle.crt")
        if cfg.requirements:
            shutil.copyfile(self._source_path("requirements", cfg.requirements), folder / "requirements.txt")
        if cfg.wheels:
            shutil.copytree(self._source_path("wheels", cfg.wheels), folder / "wheels")

    # --------------------------------------------------------------- probing
    def _probe(self, engine: Engine, image_id: str) -> dict[str, str]:
        """Interpreter path, version and installed distributions inside the image, once per image id."""
        from mltrain.environments.probe import _PROBE

        python = f"{VENV}/bin/python" if self._makes_venv else self.config.python
        cache = self.cache_dir / "docker" / f"probe-{image_id.replace(':', '-')}-{digest(python)[:12]}.json"
        try:
            return dict(json.loads(cache.read_text()))
        except (OSError, ValueError):
            pass
        spec = {"Image": image_id, "Entrypoint": [python], "Cmd": ["-c", _PROBE],
                "Labels": {"mltrain.probe": "true", **self.config.labels},
                "HostConfig": {"NetworkMode": "none", "SecurityOpt": ["no-new-privileges"]}}
        try:
            code, out, err = engine.run_to_end(spec, timeout=PROBE_TIMEOUT)
            if code != 0:
                raise EnvironmentBuildError(err.decode(errors="replace").strip() or f"exit code {code}")
            data = json.loads(out.decode().strip().splitlines()[-1])
        except Exception as exc:
            detail = getattr(exc, "explanation", None) or str(exc)
            raise EnvironmentBuildError(
                f"image {self.tag()} has no working {python} ({_line(str(detail))}); "
                "set environment.python to the interpreter inside the image"
            ) from exc
        info = {"executable": str(data["executable"]), "version": str(data["version"]), "freeze": str(data["freeze"])}
        from mltrain.hosts.agent import write_atomic

        write_atomic(os.fspath(cache), json.dumps(info).encode())
        return info


def _quote(value: Any) -> str:
    """A Dockerfile double-quoted word: no variable expansion, backslashes and quotes kept."""
    return json.dumps(str(value), ensure_ascii=False).replace("$", "\\$")


def _follow_build(events: Iterable[dict[str, Any]], log: LogFn, tag: str, tls_hint: str = "",
                  on_step: LogFn | None = None) -> str | None:
    """Stream the build output to ``log`` (and each ``Step N/M`` to ``on_step``); a failure names the
    failing step and the tail of the output.

    A failing step whose output shows a certificate check failing says so
    first, with ``tls_hint`` (how to make the build trust the right CAs):
    pip's own last line ("No matching distribution") hides the cause.
    """
    step = "the first step"
    tail: deque[str] = deque(maxlen=20)
    tls: str | None = None  # the first sign of a failed certificate check in the current step
    image_id = None
    pending = ""
    for event in events:
        if "stream" in event:
            pending += event["stream"]
            *lines, pending = pending.split("\n")
            for line in lines:
                line = _CONTROL.sub("", _ANSI.sub("", line.rstrip("\r")))  # the legacy builder paints stderr red
                if not line.strip():
                    continue
                log(f"  {line}")
                if line.startswith("Step "):
                    step = line
                    tail.clear()  # the tail that matters is the failing step's own output
                    tls = None
                    if on_step is not None:
                        on_step(line)
                elif not line.lstrip().startswith(("--->", "Removing intermediate container")):
                    tail.append(line.strip())
                    if tls is None and TLS_FAILURE.search(line):
                        detail = TLS_DETAIL.search(line)
                        tls = (detail.group(0) if detail else line).strip(" :,;")
        elif "status" in event and "progress" not in event:
            log(f"  {event.get('id', '')} {event['status']}".rstrip())
        if "aux" in event and isinstance(event["aux"], dict):
            image_id = event["aux"].get("ID", image_id)
        if "error" in event:
            error = _line(event.get("errorDetail", {}).get("message") or event["error"])
            last = " | ".join(list(tail)[-TAIL_LINES:]) or "no output"
            if tls is not None:  # the cause, and what to do, instead of the step's exit code
                error = f"a TLS certificate check failed inside the build ({_line(tls, 160)}); {tls_hint}"
            raise EnvironmentBuildError(
                f"docker build of {tag} failed at {_line(step, 160)}: {error}; last output: {_line(last, 300)} "
                "(whole build log above / in `mltrain runs logs`)"
            )
    return image_id


def parse_repository_tag(image: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` -> (repository, tag or digest); a port in the registry host is not a tag."""
    if "@" in image:
        repository, digest_ref = image.split("@", 1)
        return repository, digest_ref
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:
        return image, None
    return repository, tag


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _line(text: str, limit: int = 240) -> str:
    """One line of at most ``limit`` characters, without terminal escapes (build output is not ours)."""
    flat = " ".join(_CONTROL.sub("", _ANSI.sub("", str(text))).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _hash_file(path: Path) -> str:
    from mltrain.snapshot.manifest import hash_bytes

    return hash_bytes(path.read_bytes())
