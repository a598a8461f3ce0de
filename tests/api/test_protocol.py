"""The HTTP layer: headers, versions, keep-alive, chunked bodies, and a batch of malformed requests after which the
daemon still serves everyone."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess

import pytest

from tests.support.daemon import REPO, Daemon, make_pki

from .test_cli import wait_until


def raw(daemon: Daemon, data: bytes, timeout: float = 10) -> bytes:
    """Send bytes on a fresh unix connection and read until the server closes (or stops sending)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(daemon.socket_path))
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed before taking everything (huge headers)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        decoded, rest = b"", body
        while rest:
            size_text, _, rest = rest.partition(b"\r\n")
            size = int(size_text, 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2:]
        body = decoded
    return int(lines[0].split()[1]), headers, body


def request(daemon: Daemon, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {path} HTTP/1.1", "Host: docker", "Connection: close"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    for key, value in (headers or {}).items():
        lines.append(f"{key}: {value}")
    return parse(raw(daemon, ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")))


def message(body: bytes) -> str:
    return json.loads(body)["message"]


def test_ping_headers_and_versions(daemon: Daemon) -> None:
    status, headers, body = request(daemon, "GET", "/_ping")
    assert (status, body) == (200, b"OK")
    assert headers["api-version"] == "1.47"
    assert headers["ostype"] == "linux"
    assert headers["server"].startswith("Docker/") and headers["server"].endswith("(linux)")
    status, headers, body = request(daemon, "HEAD", "/_ping")
    assert status == 200 and headers["api-version"] == "1.47" and body == b""
    status, _, body = request(daemon, "GET", "/v1.24/version")
    assert status == 200 and json.loads(body)["ApiVersion"] == "1.47"
    status, headers, body = request(daemon, "GET", "/v1.99/version")
    assert status == 400 and headers["api-version"] == "1.47"
    assert message(body) == "client version 1.99 is too new. Maximum supported API version is 1.47"
    status, _, body = request(daemon, "GET", "/v1.12/version")
    assert status == 400 and message(body).startswith("client version 1.12 is too old. Minimum supported API")


def test_unsupported_paths_are_clean_errors(daemon: Daemon) -> None:
    status, _, body = request(daemon, "GET", "/v1.47/nothing/here")
    assert (status, message(body)) == (404, "page not found")
    status, _, body = request(daemon, "GET", "/swarm")
    assert status == 503 and "not a swarm manager" in message(body)
    status, _, _ = request(daemon, "POST", "/v1.47/services/create", b"{}")
    assert status == 503
    status, _, _ = request(daemon, "GET", "/v1.47/plugins/x/json")
    assert status == 404


def test_keep_alive_serves_several_requests_on_one_connection(daemon: Daemon) -> None:
    one = b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"
    response = raw(daemon, one + one + b"GET /v1.47/version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
    assert response.count(b"HTTP/1.1 200 OK") == 3
    assert b'"ApiVersion"' in response


def test_chunked_request_body(daemon: Daemon, image: str, name: str) -> None:
    body = json.dumps({"Image": image, "Cmd": ["true"]}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:])) + b"0\r\n\r\n"
    head = (f"POST /v1.47/containers/create?name={name} HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    status, _, response = parse(raw(daemon, head + chunks))
    assert status == 201, response
    assert len(json.loads(response)["Id"]) == 64
    daemon.out("rm", name)


def test_query_booleans_parse_like_moby(daemon: Daemon, image: str, name: str) -> None:
    daemon.out("create", "--name", name, image, "true")
    for spelling, listed in (("1", True), ("True", True), ("yes", True), ("False", False), ("0", False),
                             ("no", False), ("none", False), ("", False)):
        status, _, body = request(daemon, "GET", f"/containers/json?all={spelling}")
        assert status == 200
        names = [entry["Names"][0] for entry in json.loads(body)]
        assert ("/" + name in names) == listed, spelling
    daemon.out("rm", name)


def post(path: str, body: object) -> bytes:
    data = json.dumps(body).encode()
    return b"POST %s HTTP/1.1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (path.encode(), len(data), data)


MALFORMED = [
    (post("/v1.47/containers/create", {"Image": "x", "HostConfig": {"Mounts": [1]}}), 400),
    (post("/v1.47/containers/create", {"Image": "x", "HostConfig": {"RestartPolicy": {"MaximumRetryCount": "x"}}}),
     400),
    (post("/v1.47/containers/create", {"Image": "x", "NetworkingConfig": {"EndpointsConfig": 5}}), 400),
    (post("/v1.47/containers/create", {"Image": "x", "Labels": {"a": 1}}), 400),
    (post("/v1.47/containers/nosuch/exec", {"Cmd": "ls"}), 400),
    (post("/v1.47/volumes/create", {"Name": 5}), 400),
    (post("/v1.47/networks/bridge/connect", {"Container": "x", "EndpointConfig": {"IPAMConfig": "x"}}), 400),
    # (request bytes, expected status)
    (b"POST /v1.47/containers/create HTTP/1.1\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{not json", 400),
    (b"POST /v1.47/containers/create HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]", 400),
    (b"POST /v1.47/containers/create HTTP/1.1\r\nContent-Length: 27\r\nConnection: close\r\n\r\n"
     b'{"Image": "x", "Tty": "no"}', 400),
    (b"POST /v1.47/containers/create HTTP/1.1\r\nContent-Length: 29\r\nConnection: close\r\n\r\n"
     b'{"Image": "x", "Bogus": true}', 400),
    (b"POST /v1.47/containers/create HTTP/1.1\r\nContent-Length: 40\r\nConnection: close\r\n\r\n"
     b'{"Image": "x", "HostConfig": {"Memory":1}', 400),
    (b"POST /v1.47/containers/create HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 400),
    (b"GET /v1.47/containers/json?filters=%7Bnope HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    (b"GET /v1.47/containers/json?limit=many HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    (b"POST /v1.47/containers/x/resize?h=a&w=b HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    (b"GET /v1.47/containers/nosuch/json HTTP/1.1\r\nConnection: close\r\n\r\n", 404),
    (b"GET /v1.47/containers/nosuch/logs HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    (b"POST /v1.47/containers/nosuch/wait?condition=bogus HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    (b"POST /v1.47/networks/create HTTP/1.1\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{\"Name\": 42}", 400),
    (b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 300000 + b"\r\n\r\n", 431),
    (b"GET /_ping HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(400)) + b"\r\n", 431),
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST /v1.47/containers/create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST /v1.47/containers/create HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"Image\": ", 400),
    (b"POST /v1.47/containers/create HTTP/1.1\r\nContent-Length: 20000000\r\n\r\n" + b"x" * 100, 413),
]


def test_malformed_requests_get_4xx_and_the_daemon_keeps_serving(daemon: Daemon, image: str, name: str) -> None:
    for data, expected in MALFORMED:
        response = raw(daemon, data, timeout=5)
        status, _, body = parse(response)
        assert status == expected, (data[:80], response[:300])
        assert message(body)
    # Clients hanging up mid-stream, on a chatty and on a quiet container: the daemon keeps serving and frees
    # their connections (a quiet follow, a wait or an event stream would otherwise hold them until data comes).
    chatty = daemon.out("run", "-d", "--name", name, image, "sh", "-c",
                        "while true; do echo tick; sleep 0.1; done").strip()
    quiet = daemon.out("run", "-d", "--name", name + "-quiet", image, "sleep", "300").strip()
    baseline = daemon_sockets(daemon)
    upgrade = "Connection: Upgrade\r\nUpgrade: tcp\r\n"
    for method, path, extra in (("GET", f"/v1.47/containers/{chatty}/logs?follow=1&stdout=1", ""),
                                ("POST", f"/v1.47/containers/{chatty}/attach?stream=1&stdout=1", upgrade),
                                ("GET", f"/v1.47/containers/{chatty}/stats", ""),
                                ("GET", "/v1.47/events", ""),
                                ("GET", f"/v1.47/containers/{quiet}/logs?follow=1&stdout=1", ""),
                                ("POST", f"/v1.47/containers/{quiet}/wait", "")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(daemon.socket_path))
            sock.sendall((f"{method} {path} HTTP/1.1\r\nHost: d\r\n{extra}\r\n").encode())
            assert sock.recv(12).startswith(b"HTTP/1.1 ")
    assert daemon.alive()
    assert wait_until(lambda: daemon_sockets(daemon) <= baseline, timeout=10), (daemon_sockets(daemon), baseline)
    assert daemon.out("ps", "--filter", "name=" + name, "--format", "{{.Names}}").split() == [name + "-quiet", name]
    assert daemon.out("logs", name).startswith("tick\n")
    daemon.out("rm", "-f", name, name + "-quiet")
    assert request(daemon, "GET", "/_ping")[0] == 200


def daemon_sockets(daemon: Daemon) -> int:
    folder = f"/proc/{daemon.process.pid}/fd"
    count = 0
    for entry in os.listdir(folder):
        try:
            count += os.readlink(os.path.join(folder, entry)).startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return count


def test_many_clients_at_once(daemon: Daemon) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: request(daemon, "GET", "/v1.47/containers/json?all=1")[0], range(64)))
    assert statuses == [200] * 64


def _tls_client(cert_paths: dict | None = None, ca: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if cert_paths:
        context.load_cert_chain(str(cert_paths["client-cert"]), str(cert_paths["client-key"]))
    return context


def test_tls_requires_a_client_certificate_from_the_ca(daemon: Daemon, image: str, tmp_path) -> None:
    host, port = daemon.tcp[len("tcp://"):].rsplit(":", 1)
    env = daemon.env(DOCKER_HOST=f"tcp://localhost:{port}", DOCKER_TLS_VERIFY="1",
                     DOCKER_CERT_PATH=str(daemon.pki["ca"].parent))
    result = daemon.docker("version", "--format", "{{.Server.APIVersion}}", env=env)
    assert (result.returncode, result.stdout) == (0, b"1.47\n"), result.stderr
    attached = daemon.docker("run", "--rm", "-i", image, "sh", "-c", "cat; echo done >&2", input=b"over tls\n",
                             env=env)
    assert (attached.returncode, attached.stdout, attached.stderr) == (0, b"over tls\n", b"done\n")
    ca = str(daemon.pki["ca"])

    def handshake(context: ssl.SSLContext) -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as plain:
            with context.wrap_socket(plain, server_hostname="localhost") as sock:
                sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
                return sock.recv(100)

    assert handshake(_tls_client(daemon.pki, ca)).startswith(b"HTTP/1.1 200")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(_tls_client(None, ca))  # no client certificate
    other = make_pki(tmp_path / "other", prefix="other ")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(_tls_client(other, ca))  # a certificate from another CA
    refused = daemon.docker("version", env=daemon.env(DOCKER_HOST=f"tcp://localhost:{port}", DOCKER_TLS_VERIFY="1",
                                                       DOCKER_CERT_PATH=str(other["ca"].parent)))
    assert refused.returncode == 1
    assert daemon.alive()


def test_dial_stdio_bridges_to_the_socket(daemon: Daemon) -> None:
    import sys

    result = subprocess.run([sys.executable, "-m", "machines.runtime", "dial-stdio", "--host", daemon.host],
                            input=b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n",
                            capture_output=True, timeout=20, cwd=str(REPO))
    assert result.returncode == 0
    assert result.stdout.startswith(b"HTTP/1.1 200 OK") and result.stdout.endswith(b"OK")
