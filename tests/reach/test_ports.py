"""Ports of a ``--api ssh`` local machine (no TCP port open on it) on this computer's 127.0.0.1, over SSH."""

from __future__ import annotations

import socket

from tests.reach.conftest import IMAGE, Reachable, eventually, free_port, http_get

HTTPD = "mkdir -p /www && echo hello-$HOSTNAME > /www/index.html && exec httpd -f -p 80 -h /www"


def test_published_ports_follow_containers_through_ports_auto(ssh_machine: Reachable) -> None:
    port = free_port()
    assert http_get(port) is None
    env = ssh_machine.cli("env", "--ssh", "--ports", "auto", "--shell", "bash", ssh_machine.name).stdout
    assert "DOCKER_HOST=" in env
    try:
        assert "auto" in ssh_machine.cli("port", "ls", ssh_machine.name).stdout
        container = ssh_machine.docker("run", "-d", "--hostname", "web", "-p", f"{port}:80", IMAGE, "sh", "-c",
                                       HTTPD).stdout.strip()
        assert eventually(lambda: http_get(port), lambda body: body is not None) == "hello-web\n"
        ssh_machine.docker("stop", "-t", "1", container)
        assert eventually(lambda: http_get(port), lambda body: body is None) is None
        ssh_machine.docker("start", container)  # started again: forwarded again
        assert eventually(lambda: http_get(port), lambda body: body is not None) == "hello-web\n"
        ssh_machine.docker("rm", "-f", container)
        assert eventually(lambda: http_get(port), lambda body: body is None) is None
    finally:
        ssh_machine.cli("env", "--ssh", "--ports", "auto", "--unset", ssh_machine.name)
    assert "auto" not in ssh_machine.cli("port", "ls", ssh_machine.name).stdout


def test_port_forwards_a_local_port_until_removed(ssh_machine: Reachable) -> None:
    inside, here = free_port(), free_port()
    container = ssh_machine.docker("run", "-d", "--hostname", "fwd", "-p", f"{inside}:80", IMAGE, "sh", "-c",
                                   HTTPD).stdout.strip()
    try:
        ssh_machine.cli("port", ssh_machine.name, f"{here}:{inside}")
        assert f"{here}:{inside}" in ssh_machine.cli("port", "ls").stdout
        assert eventually(lambda: http_get(here), lambda body: body is not None) == "hello-fwd\n"
        again = ssh_machine.cli("port", ssh_machine.name, f"{here}:{inside}")  # the same forward: kept, no error
        assert again.returncode == 0
        other = ssh_machine.cli("port", ssh_machine.name, f"{here}:1", check=False)
        assert other.returncode != 0
        assert f"already forwards {here}:{inside}: 'machines port rm {ssh_machine.name} {here}' first" in other.stderr
        ssh_machine.cli("port", "rm", ssh_machine.name, str(here))
        assert http_get(here) is None
        assert f"{here}:" not in ssh_machine.cli("port", "ls").stdout
    finally:
        ssh_machine.cli("port", "rm", "--all", ssh_machine.name)
        ssh_machine.docker("rm", "-f", container)


def test_reverse_port_reaches_this_computer(ssh_machine: Reachable) -> None:
    import http.server
    import threading

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"from-workstation")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    remote = free_port()
    try:
        ssh_machine.cli("port", "--reverse", ssh_machine.name, f"{remote}:{server.server_address[1]}")
        fetched = ssh_machine.cli("ssh", ssh_machine.name, f"wget -qO- http://127.0.0.1:{remote}/").stdout
        assert fetched == "from-workstation"
        assert f"-R {remote}:" in ssh_machine.cli("port", "ls", ssh_machine.name).stdout
    finally:
        ssh_machine.cli("port", "rm", ssh_machine.name, f"R:{remote}")
        server.shutdown()
    assert ssh_machine.cli("ssh", ssh_machine.name, f"wget -qO- http://127.0.0.1:{remote}/", check=False).returncode


def test_bad_port_requests_are_refused_with_one_line(ssh_machine: Reachable) -> None:
    for args, message in (
        (("port", "--reverse", ssh_machine.name, "53", "--udp"), "not --reverse"),
        (("port", "--reverse", ssh_machine.name, "53/udp"), "not --reverse"),
        (("port", ssh_machine.name, "80:99999"), "invalid port 99999"),
        (("port", ssh_machine.name, "../x"), "invalid port '../x'"),
        (("port", "rm", ssh_machine.name), "give --all"),
        (("env", "--ports", "all", ssh_machine.name), "invalid --ports 'all'"),
    ):
        result = ssh_machine.cli(*args, check=False)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_busy_local_port_is_reported(ssh_machine: Reachable) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = ssh_machine.cli("port", ssh_machine.name, str(port), check=False)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr


def test_ports_watch_in_the_foreground_until_interrupted(ssh_machine: Reachable) -> None:
    import signal
    import subprocess

    from tests.support.cli import MACHINES

    port = free_port()
    container = ssh_machine.docker("run", "-d", "--hostname", "fg", "-p", f"{port}:80", IMAGE, "sh", "-c",
                                   HTTPD).stdout.strip()
    watcher = subprocess.Popen([MACHINES, "--storage-path", str(ssh_machine.store), "ports", "watch",
                                ssh_machine.name], env=ssh_machine.env, stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().startswith(f"forwarding 127.0.0.1:{port} to {ssh_machine.name}:{port}")
        assert eventually(lambda: http_get(port), lambda body: body is not None) == "hello-fg\n"
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(30)
        ssh_machine.docker("rm", "-f", container)
    assert http_get(port) is None  # the forwards end with the command


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
while True:
    data, client = s.recvfrom(65535)
    s.sendto(b"echo:" + data, client)
"""


def _udp_ask(port: int, payload: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(2)
        client.sendto(payload, ("127.0.0.1", port))
        try:
            return client.recv(65535)
        except OSError:
            return None


def test_udp_port_through_a_relay_on_the_machine(ssh_machine: Reachable) -> None:
    inside, here = free_port(), free_port()
    pid = ssh_machine.cli("ssh", ssh_machine.name, "--", f"{{ python3 -c '{UDP_ECHO}' {inside} </dev/null "
                          ">/dev/null 2>&1 & }; echo $!").stdout.strip()
    try:
        ssh_machine.cli("port", ssh_machine.name, f"{here}:{inside}/udp")
        assert f"{here}:{inside}/udp" in ssh_machine.cli("port", "ls", ssh_machine.name).stdout
        assert eventually(lambda: _udp_ask(here, b"one"), lambda reply: reply is not None) == b"echo:one"
        big = bytes(range(256)) * 200  # 51200 bytes in one datagram, framed whole
        assert _udp_ask(here, big) == b"echo:" + big
        ssh_machine.cli("port", "rm", ssh_machine.name, f"{here}/udp")
        assert _udp_ask(here, b"two") is None
    finally:
        ssh_machine.cli("port", "rm", "--all", ssh_machine.name)
        ssh_machine.cli("ssh", ssh_machine.name, f"kill {pid}", check=False)


def test_ports_auto_forwards_published_udp_ports_too(ssh_machine: Reachable) -> None:
    port = free_port()
    ssh_machine.cli("ports", "watch", "-d", ssh_machine.name)
    # busybox has no UDP server: the machine's own python3, lent read-only to the container
    lent = [option for folder in ("/usr", "/lib", "/lib64") for option in ("-v", f"{folder}:{folder}:ro")]
    container = ssh_machine.docker("run", "-d", "-p", f"{port}:{port}/udp", *lent, IMAGE, "/usr/bin/python3", "-c",
                                   UDP_ECHO.replace("127.0.0.1", "0.0.0.0"), str(port)).stdout.strip()
    try:
        assert eventually(lambda: _udp_ask(port, b"ping"), lambda reply: reply is not None) == b"echo:ping"
        ssh_machine.docker("rm", "-f", container)
        assert eventually(lambda: _udp_ask(port, b"ping"), lambda reply: reply is None) is None
    finally:
        ssh_machine.docker("rm", "-f", container, check=False)
        ssh_machine.cli("port", "rm", ssh_machine.name, "auto")
