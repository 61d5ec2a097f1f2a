"""mltrain.targets.docker.engine without an engine: frame and progress-stream parsing across any chunking, the create
request made from every compute option, and the HTTP client against a scripted server on a unix socket
(keep-alive, an idle connection the server closed, API version negotiation, errors)."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mltrain.errors import ConfigError, TargetError
from mltrain.hosts.container import CODE_DIR, RunContainer
from mltrain.targets.docker.config import DockerCompute
from mltrain.targets.docker.engine import Engine, EngineError, NotFound, demux, json_events, since_param
from mltrain.targets.docker.executor import limits, parse_size
from mltrain.targets.docker.util import EngineConfig


def _frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def _cuts(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# ------------------------------------------------------------------- framing
def test_demux_reassembles_frames_cut_anywhere() -> None:
    frames = [(1, b"2024-01-01T00:00:00.1Z hello\n"), (2, b"x" * 70000), (1, b""), (2, b"err\n"), (1, b"\x00\x01")]
    data = b"".join(_frame(s, p) for s, p in frames)
    for size in (1, 3, 7, 8, 9, 4096, len(data)):
        assert list(demux(_cuts(data, size))) == frames, size
    assert list(demux([])) == []


def test_demux_refuses_a_stream_cut_inside_a_frame() -> None:
    data = _frame(1, b"hello")
    with pytest.raises(TargetError, match="inside a frame"):
        list(demux([data[:-2]]))


def test_json_events_across_chunks() -> None:
    events = [{"stream": "Step 1/2 : FROM x\n"}, {"status": "Pulling", "id": "abc"}, {"aux": {"ID": "sha256:1"}},
              {"stream": "ünïcode {not json}\n"}]
    data = "\r\n".join(json.dumps(e, ensure_ascii=False) for e in events).encode()
    for size in (1, 2, 5, 64, len(data)):
        assert list(json_events(_cuts(data, size))) == events, size
    with pytest.raises(TargetError, match="mid-message"):
        list(json_events([b'{"stream": "cut']))


def test_since_is_exact_to_the_nanosecond() -> None:
    assert since_param(1_700_000_000_000_000_001) == "1700000000.000000001"
    assert since_param(5 * 10**9) == "5.000000000"


# --------------------------------------------------------- the create request
def _container(**extra: Any) -> RunContainer:
    values: dict[str, Any] = {"image": "img:1", "argv": ["/venv/bin/python", "t.py", "a b", "$(id)"],
                              "user": "1000:1000", "run_id": "r1", "experiment": "e",
                              "env": {"A": "1", "B": "x=y\nz"}, "code": "/snap"}
    return RunContainer(**{**values, **extra})


def test_create_body_carries_every_option() -> None:
    cfg = DockerCompute(mem_limit="4g", cpus=1.5, shm_size="512m", gpus="device=0, 1", network="my-net")
    body = _container().engine_body(limits(cfg))
    assert body["Image"] == "img:1"
    assert body["Entrypoint"] == ["/venv/bin/python"] and body["Cmd"] == ["t.py", "a b", "$(id)"]
    assert body["WorkingDir"] == CODE_DIR and body["User"] == "1000:1000"
    assert body["Env"] == ["HOME=/mltrain/home", "A=1", "B=x=y\nz", "MLTRAIN_OUTPUT_DIR=/mltrain/run/outputs",
                           "MLTRAIN_METRICS_FILE=/mltrain/run/metrics.jsonl"]
    assert body["Labels"] == {"mltrain.run_id": "r1", "mltrain.experiment": "e"}
    assert body["Tty"] is False and body["OpenStdin"] is False
    host = body["HostConfig"]
    assert host["Binds"] == ["/snap:/mltrain/code:ro"] and host["Tmpfs"] == {"/mltrain/home": "mode=1777"}
    assert host["Init"] is True and host["Privileged"] is False and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == host["MemorySwap"] == 4 * 1024**3  # no swap beyond the limit
    assert host["NanoCpus"] == 1_500_000_000 and host["ShmSize"] == 512 * 1024**2
    assert host["NetworkMode"] == "my-net"
    assert host["DeviceRequests"] == [{"Driver": "", "Count": 0, "DeviceIDs": ["0", "1"],
                                       "Capabilities": [["gpu"]], "Options": {}}]
    json.dumps(body)  # what goes on the wire


def test_create_body_defaults_add_nothing_optional() -> None:
    host = _container(home_tmpfs=False).engine_body(limits(DockerCompute()))["HostConfig"]
    assert set(host) == {"Binds", "Init", "SecurityOpt", "Privileged"}


def test_docker_run_says_what_the_create_body_says() -> None:
    """compute=ssh with an image starts the same container with ``docker run``: the same user, init,
    no-new-privileges, mounts, labels, working directory and entrypoint; values of variables stay off the argv."""
    spec = _container(outputs="/r/outputs", metrics="/r/metrics.jsonl", env={"SECRET": "s3cr3t-value"})
    argv, body = spec.run_argv(), spec.engine_body()
    assert argv[:3] == ["docker", "run", "--rm"] and "--privileged" not in argv
    assert "--init" in argv and body["HostConfig"]["Init"] is True

    def values(flag: str) -> list[str]:
        return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == flag]

    assert values("--user") == [body["User"]]
    assert values("--security-opt") == body["HostConfig"]["SecurityOpt"]
    assert values("-v") == body["HostConfig"]["Binds"]
    assert values("--tmpfs") == [f"{k}:{v}" for k, v in body["HostConfig"]["Tmpfs"].items()]
    assert values("--label") == [f"{k}={v}" for k, v in body["Labels"].items()]
    assert values("-w") == [body["WorkingDir"]]
    assert values("--entrypoint") == body["Entrypoint"] and argv[-4:] == [body["Image"], *body["Cmd"]]
    assert sorted(values("-e")) == sorted(["HOME=/mltrain/home", *spec.job_env()])  # names only: no value
    assert not any("s3cr3t-value" in word for word in argv)


@pytest.mark.parametrize(("gpus", "count", "ids"), [("all", -1, []), ("2", 2, []), ("0,1", 0, ["0", "1"])])
def test_gpus_become_device_requests(gpus: str, count: int, ids: list[str]) -> None:
    body = _container().engine_body(limits(DockerCompute(gpus=gpus)))
    (request,) = body["HostConfig"]["DeviceRequests"]
    assert (request["Count"], request["DeviceIDs"], request["Capabilities"]) == (count, ids, [["gpu"]])


def test_sizes() -> None:
    assert parse_size("mem_limit", "48m") == 48 * 1024**2
    assert parse_size("mem_limit", "1.5g") == int(1.5 * 1024**3)
    assert parse_size("mem_limit", "4GB") == 4 * 1024**3
    assert parse_size("mem_limit", "1024") == 1024
    for bad in ("lots", "4x", "", "-1g"):
        with pytest.raises(ConfigError, match=r"compute\.mem_limit"):
            parse_size("mem_limit", bad)
    with pytest.raises(ConfigError, match=r"compute\.gpus"):
        limits(DockerCompute(gpus="device=,"))


# ------------------------------------------------------- the HTTP client itself
Handler = Callable[[str, str, bytes], tuple[int, dict[str, str], bytes | list[bytes]]]


class ScriptedEngine:
    """An HTTP/1.1 server on a unix socket answering with ``handler``; counts connections, logs requests."""

    def __init__(self, path: Path, handler: Handler, *, close_after: int | None = None) -> None:
        self.path = str(path)
        self.handler = handler
        self.close_after = close_after  # requests served per connection before the server closes it
        self.connections = 0
        self.requests: list[tuple[str, str]] = []
        self.engines: list[Engine] = []  # clients to close with the server
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader, contextlib.suppress(OSError):
            self._answer(conn, reader)

    def _answer(self, conn: socket.socket, reader: Any) -> None:
        served = 0
        while self.close_after is None or served < self.close_after:
            line = reader.readline()
            if not line:
                return
            method, target, _ = line.decode().split(" ", 2)
            headers = {}
            while (header := reader.readline()) not in (b"\r\n", b""):
                key, _, value = header.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            body = reader.read(int(headers.get("content-length", 0)))
            self.requests.append((method, target))
            status, extra, payload = self.handler(method, target, body)
            head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            if isinstance(payload, list):  # chunked
                conn.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
                for part in payload:
                    conn.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                conn.sendall(b"0\r\n\r\n")
            else:
                conn.sendall((head + f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload)
            served += 1

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
        self.server.close()


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Callable[..., ScriptedEngine]]:
    made: list[ScriptedEngine] = []

    def make(handler: Handler, **kwargs: Any) -> ScriptedEngine:
        made.append(ScriptedEngine(tmp_path / f"e{len(made)}.sock", handler, **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


JSON = {"Content-Type": "application/json"}


def _engine(server: ScriptedEngine) -> Engine:
    engine = Engine(EngineConfig(base_url=f"unix://{server.path}", timeout=5))
    server.engines.append(engine)
    return engine


def test_one_keep_alive_connection_and_chunked_streams(scripted: Callable[..., ScriptedEngine]) -> None:
    log = _frame(1, b"2024-01-01T00:00:00Z line one\n") + _frame(2, b"2024-01-01T00:00:01Z oops\n")

    def handler(method: str, target: str, body: bytes) -> Any:
        if target.endswith("/logs?stdout=1&stderr=1&follow=0&timestamps=1"):
            return 200, {}, _cuts(log, 5)  # chunk boundaries inside frame headers
        if target.startswith("/v1.41/images/"):
            return 200, JSON, json.dumps({"Id": "sha256:abc"}).encode()
        if target.startswith("/v1.41/containers/create?name=run1"):
            assert json.loads(body)["Image"] == "img"
            return 201, JSON, b'{"Id": "c1", "Warnings": []}'
        return 404, JSON, b'{"message": "No such container: nope"}'

    server = scripted(handler)
    engine = _engine(server)
    assert engine.inspect_image("mltrain-env:1")["Id"] == "sha256:abc"
    assert engine.create_container({"Image": "img"}, "run1") == "c1"
    frames = list(demux(engine.logs("c1", timestamps=True)))
    assert frames == [(1, b"2024-01-01T00:00:00Z line one\n"), (2, b"2024-01-01T00:00:01Z oops\n")]
    assert engine.inspect_container("nope") is None
    with pytest.raises(NotFound, match="No such container"):
        engine.start("nope")
    assert server.connections == 1  # every call, the stream included, on one connection
    assert server.requests[0] == ("GET", "/v1.41/images/mltrain-env%3A1/json")


def test_an_idle_connection_the_engine_closed_is_reopened(scripted: Callable[..., ScriptedEngine]) -> None:
    server = scripted(lambda m, t, b: (200, JSON, b'{"Id": "x"}'), close_after=1)
    engine = _engine(server)
    for _ in range(3):
        assert engine.inspect_image("i") == {"Id": "x"}
    assert server.connections == 3


def test_a_refused_api_version_is_negotiated_once(scripted: Callable[..., ScriptedEngine]) -> None:
    def handler(method: str, target: str, body: bytes) -> Any:
        if target == "/version":
            return 200, JSON, b'{"ApiVersion": "1.40", "MinAPIVersion": "1.12"}'
        if target.startswith("/v1.41/"):
            return 400, JSON, b'{"message": "client version 1.41 is too new. Maximum supported API version is 1.40"}'
        return 200, JSON, b'{"Id": "x"}'

    server = scripted(handler)
    engine = _engine(server)
    assert engine.inspect_image("i") == {"Id": "x"}
    assert engine.api_version == "1.40"
    assert engine.inspect_image("j") == {"Id": "x"}
    assert [t for _, t in server.requests] == ["/v1.41/images/i/json", "/version", "/v1.40/images/i/json",
                                               "/v1.40/images/j/json"]


def test_engine_errors_and_unreachable_engines_are_one_line(scripted: Callable[..., ScriptedEngine],
                                                            tmp_path: Path) -> None:
    server = scripted(lambda m, t, b: (500, JSON, b'{"message": "driver failed\\nsecond line"}'))
    with pytest.raises(EngineError) as info:
        _engine(server).start("c")
    assert info.value.status == 500 and "driver failed" in str(info.value)
    down = Engine(EngineConfig(base_url=f"unix://{tmp_path}/none.sock"))
    with pytest.raises(TargetError, match=r"cannot reach the Docker engine .*no engine socket there.*dockerd"):
        down.inspect_image("i")
    down.close()


def test_a_local_error_is_not_blamed_on_the_engine_and_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    from mltrain.targets.docker.util import engine_error

    full = engine_error("copy the outputs out of container c", OSError(28, "No space left on device"))
    assert str(full) == "could not copy the outputs out of container c: [Errno 28] No space left on device"
    missing = tmp_path / "ca.pem"
    engine = Engine(EngineConfig(base_url="tcp://127.0.0.1:9", tls_verify=True, tls_ca_cert=str(missing)))
    with pytest.raises(ConfigError, match=rf"compute.tls_ca_cert='{missing}': no such file"):
        engine.inspect_image("i")
    missing.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"cannot load the Docker TLS files: .*PEM files"):
        engine.inspect_image("i")


def test_wait_returns_none_when_the_timeout_passes(scripted: Callable[..., ScriptedEngine]) -> None:
    release = threading.Event()

    def handler(method: str, target: str, body: bytes) -> Any:
        if target.endswith("/wait"):
            release.wait(5)
        return 200, JSON, b'{"StatusCode": 3, "Error": null}'

    server = scripted(handler)
    engine = _engine(server)
    assert engine.wait("c", timeout=0.05) is None
    release.set()
    assert engine.wait("c", timeout=5) == {"StatusCode": 3, "Error": None}
