"""Detach keys and byte-exact attach/exec streams, with the real docker CLI through a pseudo-terminal and with
docker-py's sockets: what a user sees when detaching, and every byte of output in order."""

from __future__ import annotations

import http.client
import json
import os
import pty
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.support.daemon import DOCKER, Daemon


class Terminal:
    """A docker CLI command on a pseudo-terminal, as a user at a keyboard runs it."""

    def __init__(self, daemon: Daemon, *args: str, env: dict[str, str] | None = None) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execve(DOCKER, [DOCKER, *args], env or daemon.env())
        self.output = b""

    def read_until(self, token: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while token not in self.output:
            assert time.monotonic() < deadline, self.output
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    self.output += os.read(self.fd, 4096)
                except OSError:  # the CLI ended: its side of the terminal is gone
                    assert token in self.output, self.output
                    return

    def type(self, keys: bytes) -> None:
        for key in keys:  # one key press at a time, as a terminal delivers them
            os.write(self.fd, bytes([key]))
            time.sleep(0.05)

    def exit_code(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = 0
                while select.select([self.fd], [], [], 0.2)[0]:  # what it printed last
                    try:
                        chunk = os.read(self.fd, 4096)
                    except OSError:
                        break
                    if not chunk:
                        break
                    self.output += chunk
                return os.waitstatus_to_exitcode(status)
            assert time.monotonic() < deadline, f"the CLI did not end: {self.output!r}"
            self.drain()

    def drain(self) -> None:
        ready, _, _ = select.select([self.fd], [], [], 0.2)
        if ready:
            try:
                self.output += os.read(self.fd, 4096)
            except OSError:
                time.sleep(0.1)

    def close(self) -> None:
        if self.pid:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def running(daemon: Daemon, name: str) -> bool:
    return json.loads(daemon.out("inspect", name))[0]["State"]["Running"]


@pytest.mark.parametrize("keys, typed", [(None, b"\x10\x11"), ("ctrl-a,x", b"\x01x")])
def test_run_it_detaches_and_the_container_keeps_running(daemon: Daemon, image: str, name: str,
                                                        keys: str | None, typed: bytes) -> None:
    args = ["run", "-it", "--name", name] + (["--detach-keys", keys] if keys else []) + [image, "sh"]
    terminal = Terminal(daemon, *args)
    try:
        terminal.read_until(b"# ")
        terminal.type(b"echo one$((1+1))\r")
        terminal.read_until(b"one2")
        terminal.type(typed)
        assert terminal.exit_code() == 0
        assert running(daemon, name)
        assert daemon.out("exec", name, "echo", "still here") == "still here\n"
    finally:
        terminal.close()
        daemon.docker("rm", "-f", name)


def test_attach_and_exec_detach_with_keys_from_the_client_config(daemon: Daemon, image: str, name: str,
                                                                 tmp_path) -> None:
    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"detachKeys": "ctrl-e,e"}))
    env = daemon.env(DOCKER_CONFIG=str(config))
    daemon.out("run", "-dit", "--name", name, image, "sh")
    try:
        attach = Terminal(daemon, "attach", name, env=env)
        try:
            attach.type(b"echo attached$((2+3))\r")
            attach.read_until(b"attached5")
            attach.type(b"\x10\x11")  # the default keys are not the configured ones: they reach the shell
            attach.type(b"\x05e")
            assert attach.exit_code() == 1  # the docker CLI's own way to end an attach it detached
            assert b"read escape sequence" in attach.output
        finally:
            attach.close()
        assert running(daemon, name)

        shell = Terminal(daemon, "exec", "-it", name, "sh", env=env)
        try:
            shell.read_until(b"# ")
            shell.type(b"sleep 4321\r")
            time.sleep(0.5)
            shell.type(b"\x05e")
            assert shell.exit_code() == 1 and b"read escape sequence" in shell.output  # as the CLI ends it
        finally:
            shell.close()
        assert running(daemon, name)
        assert "sleep 4321" in daemon.out("exec", name, "ps")  # the exec goes on without its client
        bad = daemon.docker("attach", "--no-stdin", "--detach-keys", "ctrl-#", name, timeout=20)
        assert bad.returncode == 1 and b"unable to upgrade to tcp, received 400" in bad.stderr  # the CLI's words
        api = docker.APIClient(base_url=daemon.host, version="auto", timeout=20)
        try:
            refused = api._post(api._url("/containers/{0}/attach", name), params={"stream": 1, "detachKeys": "ctrl-#"})
            assert refused.status_code == 400 and "Invalid detach keys (ctrl-#) provided" in refused.text
        finally:
            api.close()
    finally:
        daemon.docker("rm", "-f", name)


@pytest.fixture
def client(daemon: Daemon) -> docker.DockerClient:
    client = docker.DockerClient(base_url=daemon.host, version="auto", timeout=60)
    yield client
    client.close()


@pytest.fixture
def sleeper(client: docker.DockerClient, image: str, name: str) -> Iterator[Any]:
    """A running container to exec in."""
    container = client.containers.run(image, "sleep 300", name=name, detach=True)
    yield container
    container.remove(force=True)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def _type_then_detach(raw: socket.socket, command: bytes, answer: bytes, keys: bytes) -> None:
    """Runs ``command`` in a TTY session, waits for ``answer``, then types the detach ``keys``: the daemon itself
    must end the stream."""
    raw.settimeout(20)
    raw.sendall(command)
    seen = b""
    while answer not in seen:
        seen += raw.recv(4096)
    raw.sendall(keys)
    _read_all(raw)
    raw.close()


def _demux(data: bytes) -> list[tuple]:
    frames, offset = [], 0
    while offset < len(data):
        stream, size = struct.unpack_from(">BxxxL", data, offset)
        frames.append((stream, data[offset + 8:offset + 8 + size]))
        offset += 8 + size
    return frames


def test_raw_attach_socket_detaches_on_the_keys(client: docker.DockerClient, image: str, name: str) -> None:
    container = client.containers.run(image, "sh", name=name, detach=True, tty=True, stdin_open=True)
    try:
        sock = client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stream": 1,
                                                              "detachKeys": "ctrl-x"})
        _type_then_detach(sock._sock, b"echo via$((3*3))\n", b"via9", b"\x18")
        container.reload()
        assert container.status == "running"
    finally:
        container.remove(force=True)


def test_raw_exec_socket_with_a_tty_detaches_and_the_exec_runs_on(client: docker.DockerClient, sleeper: Any) -> None:
    exec_id = client.api.exec_create(sleeper.id, ["sh"], stdin=True, tty=True, detach_keys="ctrl-b,b")["Id"]
    raw = client.api.exec_start(exec_id, tty=True, socket=True)._sock
    _type_then_detach(raw, b"echo ex$((4*4)); sleep 777\n", b"ex16", b"\x02b")
    assert client.api.exec_inspect(exec_id)["Running"] is True
    code, out = sleeper.exec_run(["ps"])
    assert b"sleep 777" in out
    with pytest.raises(docker.errors.APIError, match="Invalid escape keys \\(ctrl-\\) provided"):
        client.api.exec_create(sleeper.id, ["true"], detach_keys="ctrl-")


def test_exec_streams_are_byte_exact(client: docker.DockerClient, sleeper: Any) -> None:
    container = sleeper
    script = "printf 'a\\nb'; printf 'E1' >&2; printf '\\001\\377\\000z'; printf 'E2' >&2"
    code, out = container.exec_run(["sh", "-c", script])  # two pipes: each stream keeps its own order
    assert code == 0 and len(out) == 11 and out.replace(b"E1", b"").replace(b"E2", b"") == b"a\nb\x01\xff\x00z"
    assert out.index(b"E1") < out.index(b"E2")
    code, (out, err) = container.exec_run(["sh", "-c", script], demux=True)
    assert (code, out, err) == (0, b"a\nb\x01\xff\x00z", b"E1E2")
    code, out = container.exec_run(["sh", "-c", script], tty=True)
    assert code == 0 and out == b"a\r\nbE1\x01\xff\x00zE2"
    code, (out, err) = container.exec_run(["sh", "-c", script], tty=True, demux=True)
    assert (code, out, err) == (0, b"a\r\nbE1\x01\xff\x00zE2", None)
    chunks = b"".join(container.exec_run(["sh", "-c", "seq 1 20000"], stream=True).output)
    assert chunks == b"".join(b"%d\n" % n for n in range(1, 20001))
    streamed = list(container.exec_run(["sh", "-c", script], stream=True, demux=True).output)
    assert b"".join(o for o, _ in streamed if o) == b"a\nb\x01\xff\x00z"
    assert b"".join(e for _, e in streamed if e) == b"E1E2"

    exec_id = client.api.exec_create(container.id, ["sh", "-c", "cat; echo done >&2"], stdin=True)["Id"]
    sock = client.api.exec_start(exec_id, socket=True)
    raw = sock._sock
    raw.settimeout(20)
    payload = bytes(range(256)) * 64
    raw.sendall(payload)
    raw.shutdown(socket.SHUT_WR)
    frames = _demux(_read_all(raw))
    raw.close()
    assert b"".join(data for stream, data in frames if stream == 1) == payload
    assert b"".join(data for stream, data in frames if stream == 2) == b"done\n"
    assert client.api.exec_inspect(exec_id)["ExitCode"] == 0


def test_tty_streams_lose_nothing_at_the_start(daemon: Daemon, image: str, sleeper: Any) -> None:
    container = sleeper
    for attempt in range(30):
        code, out = container.exec_run(["echo", f"start{attempt}"], tty=True)
        assert (code, out) == (0, b"start%d\r\n" % attempt)
    for attempt in range(10):
        result = daemon.docker("run", "--rm", "-t", image, "echo", f"first{attempt}")
        assert result.stdout == b"first%d\r\n" % attempt


def test_exec_exit_codes_and_users_as_docker(daemon: Daemon, sleeper: Any) -> None:
    container, name = sleeper, sleeper.name
    container.exec_run(["sh", "-c", "echo 'svc:x:1234:4321::/home/svc:/bin/sh' >> /etc/passwd; "
                                    "echo 'team:x:4321:' >> /etc/group; echo 'extra:x:555:svc' >> /etc/group"])
    code, out = container.exec_run(["id"], user="svc")
    assert (code, out) == (0, b"uid=1234(svc) gid=4321(team) groups=555(extra),4321(team)\n")
    code, out = container.exec_run(["id", "-u"], user="svc:extra")
    assert (code, out) == (0, b"1234\n")
    missing = daemon.docker("exec", name, "no-such-binary")
    assert missing.returncode == 127
    assert b'exec: "no-such-binary": executable file not found in $PATH' in missing.stderr
    denied = daemon.docker("exec", name, "/etc/passwd")
    assert denied.returncode == 126
    code, out = container.exec_run(["no-such-binary"])
    assert code == 127 and b"executable file not found in $PATH" in out
    nobody = daemon.docker("exec", "-u", "ghost", name, "true")  # refused at create, as dockerd does
    assert nobody.returncode == 1
    assert b"unable to find user ghost: no matching entries in passwd file" in nobody.stderr
    inside = {line.split(":")[0] for line in container.exec_run(["cat", "/etc/group"])[1].decode().splitlines()}
    host_only = next(line.split(":")[0] for line in open("/etc/group") if line.split(":")[0] not in inside)
    container.exec_run(["ln", "-sf", "/../../../../etc/group", "/etc/group"])  # would be the host's, followed there
    with pytest.raises(docker.errors.APIError, match=f"unable to find group {host_only}"):
        container.exec_run(["id", "-g"], user="svc:" + host_only)


def test_attach_streams_are_byte_exact(client: docker.DockerClient, daemon: Daemon, image: str, name: str) -> None:
    script = "printf 'a\\000b\\377'; printf 'e\\001' >&2; printf 'z'"
    result = daemon.docker("run", "--rm", image, "sh", "-c", script)
    assert (result.stdout, result.stderr) == (b"a\x00b\xffz", b"e\x01")
    container = client.containers.create(image, ["sh", "-c", script], name=name)  # attached before it starts
    try:
        live = client.api.attach(container.id, stdout=True, stderr=True, stream=True, demux=True)
        container.start()
        frames = list(live)
        assert b"".join(out for out, _ in frames if out) == b"a\x00b\xffz"
        assert b"".join(err for _, err in frames if err) == b"e\x01"
        assert container.wait(timeout=30)["StatusCode"] == 0
        logged = client.api.attach(container.id, stdout=True, stderr=False, logs=True, stream=False)
        assert logged == b"a\x00b\xffz"
    finally:
        container.remove(force=True)


def _connect(daemon: Daemon, transport: str) -> socket.socket:
    if transport == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(daemon.socket_path))
        return sock
    host, port = daemon.tcp[len("tcp://"):].rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(daemon.pki["ca"]))
    context.load_cert_chain(str(daemon.pki["client-cert"]), str(daemon.pki["client-key"]))
    return context.wrap_socket(socket.create_connection((host, int(port))), server_hostname="localhost")


@pytest.mark.parametrize("transport", ["unix", "tls"])
def test_output_sent_before_a_buffered_client_reads_the_headers_reaches_it(
        client: docker.DockerClient, daemon: Daemon, sleeper: Any, transport: str) -> None:
    """docker-py's way: the 101 headers through http.client's buffered reader, then the payload from the socket
    underneath. The client reads nothing until the daemon has written everything and hung up, so any payload
    the daemon let a read take together with the headers would be lost in the buffer."""
    exec_id = client.api.exec_create(sleeper.id, ["sh", "-c", "echo out; echo err >&2"])["Id"]
    sock = _connect(daemon, transport)
    sock.settimeout(30)
    try:
        body = b'{"Detach": false, "Tty": false}'
        sock.sendall(b"POST /v1.41/exec/%s/start HTTP/1.1\r\nHost: docker\r\nUser-Agent: docker-sdk-python/7.1.0\r\n"
                     b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (exec_id.encode(), len(body), body))
        watch = select.poll()
        watch.register(sock, select.POLLRDHUP)
        assert watch.poll(30000), "the daemon did not end the stream"  # output and hang-up all queued, unread
        response = http.client.HTTPResponse(sock)  # reads the headers through an 8 KiB buffer, as docker-py does
        response.begin()
        assert response.status == 101
        frames = _demux(_read_all(sock))
    finally:
        sock.close()
    assert b"".join(data for stream, data in frames if stream == 1) == b"out\n"
    assert b"".join(data for stream, data in frames if stream == 2) == b"err\n"


SO_PASSRIGHTS = 83  # Linux 6.16: a unix socket that refuses descriptors (the sender's sendmsg fails with EPERM)


def test_a_client_that_refuses_descriptors_still_gets_its_stream(client: docker.DockerClient, daemon: Daemon,
                                                                sleeper: Any) -> None:
    exec_id = client.api.exec_create(sleeper.id, ["sh", "-c", "echo out; echo err >&2"])["Id"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PASSRIGHTS, 0)
    except OSError:
        sock.close()
        pytest.skip("this kernel has no SO_PASSRIGHTS (Linux < 6.16)")
    sock.settimeout(30)
    try:
        sock.connect(str(daemon.socket_path))
        body = b'{"Detach": false, "Tty": false}'
        sock.sendall(b"POST /v1.41/exec/%s/start HTTP/1.1\r\nHost: docker\r\nUser-Agent: docker-sdk-python/7.1.0\r\n"
                     b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (exec_id.encode(), len(body), body))
        head, _, rest = _read_all(sock).partition(b"\r\n\r\n")
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 101 UPGRADED")
    frames = _demux(rest)
    assert b"".join(data for stream, data in frames if stream == 1) == b"out\n"
    assert b"".join(data for stream, data in frames if stream == 2) == b"err\n"
    assert daemon.alive()


def test_docker_py_over_mutual_tls_gets_every_exec_and_attach_output(daemon: Daemon, image: str, sleeper: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests would ignore our CA (psf/requests#3829)
        monkeypatch.delenv(key, raising=False)
    host, port = daemon.tcp[len("tcp://"):].rsplit(":", 1)
    tls = docker.tls.TLSConfig(client_cert=(str(daemon.pki["client-cert"]), str(daemon.pki["client-key"])),
                               ca_cert=str(daemon.pki["ca"]), verify=True)
    api = docker.APIClient(base_url=f"https://{host}:{port}", tls=tls, version="auto", timeout=60)
    try:
        for attempt in range(10):  # the output follows the headers at once: nothing may be lost between them
            exec_id = api.exec_create(sleeper.id, ["echo", f"tls{attempt}"])["Id"]
            assert api.exec_start(exec_id) == b"tls%d\n" % attempt
        done = api.create_container(image, ["echo", "attached"])["Id"]
        try:
            api.start(done)
            assert api.wait(done)["StatusCode"] == 0
            assert api.attach(done, stdout=True, stderr=True, logs=True, stream=False) == b"attached\n"
        finally:
            api.remove_container(done, force=True)
    finally:
        api.close()
