"""Hostile clients against the API server: floods of idle, half-handshaken and slowloris connections.

The daemon must keep serving a client with a valid certificate, and unauthenticated sockets must never cost a
thread (counted from /proc/PID/status). Everything goes to loopback only, bounded in count and time.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from machines.runtime.api import server
from machines.runtime.api.server import App, Router, Server, bind_tcp, bind_unix, json_response, tls_context
from tests.support.daemon import DOCKER, Daemon, make_pki

IDLE_SOCKETS = 300  # more than PENDING_PER_ADDRESS: the oldest are dropped to make room
HALF_HELLOS = 60  # a TLS ClientHello cut in the middle: the handshake can never finish
CERTIFIED_SLOWLORIS = 8  # authenticated, then request headers that never end
SERVED_WITHIN = 60.0  # a bounded wait, not a speed requirement


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError(f"no Threads line for pid {pid}")


class _ThreadWatch:
    """Samples a process's thread count in the background; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = _threads(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _threads(self.pid))

    def __enter__(self) -> _ThreadWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _client_hello() -> bytes:
    """The first flight of a real TLS client, to send only half of it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _certified(pki: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.load_cert_chain(str(pki["client-cert"]), str(pki["client-key"]))
    return context


def _port(daemon: Daemon) -> int:
    return int(daemon.tcp.rsplit(":", 1)[1])


@contextlib.contextmanager
def _flood(daemon: Daemon) -> Iterator[list[socket.socket]]:
    """Idle sockets, half ClientHellos, plain-text slowloris and certified slowloris against the TLS port."""
    port = _port(daemon)
    sockets: list[socket.socket] = []
    try:
        for _ in range(IDLE_SOCKETS):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        hello = _client_hello()
        for _ in range(HALF_HELLOS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(hello[: len(hello) // 2])
            sockets.append(sock)
        for _ in range(20):  # HTTP in clear to a TLS port: refused at once, must not linger either
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        context = _certified(daemon.pki)
        for _ in range(CERTIFIED_SLOWLORIS):
            sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                       server_hostname="localhost")
            sock.sendall(b"GET /v1.47/info HTTP/1.1\r\nHost: x\r\nX-Slow: a")
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_certified_clients_are_served_through_a_connection_flood(daemon: Daemon,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pid = daemon.process.pid
    baseline = _threads(pid)
    port = _port(daemon)
    env = daemon.env(DOCKER_HOST=f"tcp://localhost:{port}", DOCKER_TLS_VERIFY="1",
                     DOCKER_CERT_PATH=str(daemon.pki["ca"].parent))
    with _ThreadWatch(pid) as watch, _flood(daemon):
        try:
            result = subprocess.run([DOCKER, "version", "--format", "{{.Server.APIVersion}}"], env=env,
                                    capture_output=True, timeout=SERVED_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"docker CLI with a valid certificate not served within {SERVED_WITHIN}s during the flood")
        assert (result.returncode, result.stdout) == (0, b"1.47\n"), result.stderr.decode()
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        pki = daemon.pki
        client = docker.DockerClient(base_url=f"https://localhost:{port}", timeout=SERVED_WITHIN,
                                     tls=docker.tls.TLSConfig(client_cert=(str(pki["client-cert"]),
                                                                           str(pki["client-key"])),
                                                              ca_cert=str(pki["ca"]), verify=True))
        try:
            assert client.ping() is True
            assert isinstance(client.containers.list(all=True), list)
        finally:
            client.close()
    # Only the certified slowloris connections may hold a thread each; hundreds of others hold none.
    allowed = baseline + CERTIFIED_SLOWLORIS + 8
    assert watch.peak <= allowed, f"daemon grew to {watch.peak} threads under the flood (baseline {baseline})"
    assert watch.peak < server.MAX_CONNECTIONS
    assert daemon.alive()


def test_an_idle_unauthenticated_connection_is_dropped_after_the_handshake_deadline(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", _port(daemon)), timeout=server.HANDSHAKE_DEADLINE + 15) as sock:
        try:
            data = sock.recv(1)
        except TimeoutError:
            pytest.fail(f"the daemon kept a silent TLS connection open beyond {server.HANDSHAKE_DEADLINE + 15}s")
        except ConnectionResetError:
            data = b""
        assert data == b""


# --- the mechanisms with small limits, on a server of the test's own ------------------------------------------------

@pytest.fixture
def small_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    """A ``Server`` answering ``GET /ping`` on a unix socket and on mutual TLS, with tight limits."""
    monkeypatch.setattr(server, "HEADER_DEADLINE", 1.0)
    monkeypatch.setattr(server, "BODY_IDLE_TIMEOUT", 1.0)
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(server, "CONNECTIONS_PER_ADDRESS", 3)
    monkeypatch.setattr(server, "PENDING_PER_ADDRESS", 8)
    router = Router()

    @router.add("GET", "/ping", "ping")
    def ping(context: object, request: server.Request) -> server.Response:
        return json_response("pong")

    @router.add("POST", "/upload", "read the body")
    def upload(context: object, request: server.Request) -> server.Response:
        return json_response(len(request.body.read()))

    pki = make_pki(tmp_path / "pki")
    path = str(tmp_path / "api.sock")
    tcp = bind_tcp("127.0.0.1", 0)
    instance = Server(App(router, None))
    instance.add(bind_unix(path))
    instance.add(tcp, tls_context(str(pki["ca"]), str(pki["server-cert"]), str(pki["server-key"])))
    instance.start()
    try:
        yield {"unix": path, "port": tcp.getsockname()[1], "pki": pki}
    finally:
        instance.shutdown()


def _unix(path: object) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def _answer(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_request_headers_trickled_past_the_deadline_get_408(small_server: dict[str, object]) -> None:
    with _unix(small_server["unix"]) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\n")
        answer = b""
        for _ in range(40):  # one header byte every 0.1 s: each read is quick, the whole never ends
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"request headers not received" in answer


def test_a_stalled_request_body_is_cut_off(small_server: dict[str, object]) -> None:
    with _unix(small_server["unix"]) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part")
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"request body stalled" in answer


def test_connections_over_the_cap_get_503_and_others_are_served_after(small_server: dict[str, object]) -> None:
    held = [_unix(small_server["unix"]) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # headers pending: each holds a connection
        time.sleep(0.2)
        with _unix(small_server["unix"]) as extra:
            answer = _answer(extra)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"too many connections" in answer
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while True:  # the held connections are released as soon as they close
        with _unix(small_server["unix"]) as sock:
            try:
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = _answer(sock)
            except (BrokenPipeError, ConnectionResetError):  # still over the cap: answered 503 and closed first
                answer = b""
        if answer.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer.startswith(b"HTTP/1.1 200"), answer


def test_per_address_cap_on_served_tcp_connections(small_server: dict[str, object]) -> None:
    context = _certified(small_server["pki"])  # type: ignore[arg-type]
    port = small_server["port"]
    held = []
    try:
        for _ in range(3):
            sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                       server_hostname="localhost")
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        time.sleep(0.2)
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                 server_hostname="localhost") as extra:
            answer = _answer(extra)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        with _unix(small_server["unix"]) as other:  # another address (the unix socket) still gets in
            other.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _answer(other).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


def test_oldest_pending_handshakes_make_room_for_a_new_client(small_server: dict[str, object]) -> None:
    port = small_server["port"]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    try:
        context = _certified(small_server["pki"])  # type: ignore[arg-type]
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                 server_hostname="localhost") as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _answer(sock).startswith(b"HTTP/1.1 200")
        idle[0].settimeout(5)
        try:
            assert idle[0].recv(1) == b"", "the oldest idle handshake was not dropped"
        except ConnectionResetError:
            pass
    finally:
        for sock in idle:
            sock.close()



def test_served_tcp_connections_have_keepalive(daemon: Daemon) -> None:
    """A peer that vanishes without a FIN (power cut, dropped route) is found by TCP keepalive, not held forever."""
    port = _port(daemon)
    context = _certified(daemon.pki)
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                             server_hostname="localhost") as sock:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        local_port = sock.getsockname()[1]
        # ss shows one timer per socket: while sent bytes await their ACK it is the retransmit timer ("on"), so look
        # again until the socket is idle and the keepalive timer shows (bounded; not a timing assertion).
        deadline = time.monotonic() + 20
        while True:
            listing = subprocess.run(
                ["ss", "-tnoH", "state", "established", f"( sport = :{port} and dport = :{local_port} )"],
                capture_output=True, text=True, check=True).stdout
            if "keepalive" in listing or "timer:(on" not in listing or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert "keepalive" in listing, listing
