"""Fixtures for networking tests: a throwaway "host" network namespace per test, "containers" in their own
network and mount namespaces, and a second host linked to the first.

The test thread itself enters the host namespace (``setns`` is per thread, and the manager's ``ip`` processes and
proxy threads inherit it), so bridges, ip_forward and iptables rules never touch the real machine and vanish
with the namespace even when a test fails. The tests still check that the manager removed them itself.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from machines.runtime.linux.syscalls import CLONE_NEWNET, setns
from machines.runtime.network import NetworkManager
from machines.runtime.network.links import in_netns, in_netns_of

REMOTE_HOST_IP = "192.168.251.1"
REMOTE_PEER_IP = "192.168.251.2"


def unique(prefix: str) -> str:
    """A name no other test (or xdist worker) uses; short enough for an interface name."""
    return f"{prefix}{uuid.uuid4().hex[: 15 - len(prefix)]}"


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """Moves the calling thread into the network namespace at ``path`` and back."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        setns(target, CLONE_NEWNET)
        yield
    finally:
        setns(back, CLONE_NEWNET)
        os.close(target)
        os.close(back)


class Host:
    """The host namespace the manager runs in; ``remote`` is another host on a link to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = "/run/netns/" + name
        self.remote = ""

    def leftovers(self) -> tuple[list[str], list[str]]:
        """Links other than lo and the link to the remote host, and iptables rules and chains of ours."""
        links = [line.split(":")[1].strip().split("@")[0] for line in sh("ip", "-o", "link", "show").splitlines()]
        links = [link for link in links if link not in ("lo", "toremote")]
        rules = [line for line in sh("iptables-save").splitlines() if "machines-net" in line.lower()]
        return links, rules


@pytest.fixture
def host() -> Iterator[Host]:
    name = unique("mrtnh")
    sh("ip", "netns", "add", name)
    try:
        with entered("/run/netns/" + name):
            sh("ip", "link", "set", "lo", "up")
            yield Host(name)
    finally:
        sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def remote(host: Host) -> Iterator[str]:
    """Another test host: its own namespace, linked to ours, with no default route (like the real test hosts)."""
    name = unique("mrtnr")
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", "toremote", "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "addr", "add", REMOTE_HOST_IP + "/24", "dev", "toremote")
        sh("ip", "link", "set", "toremote", "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "addr", "add", REMOTE_PEER_IP + "/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        host.remote = "/run/netns/" + name
        yield host.remote
    finally:
        sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def manager(host: Host, tmp_path: Path) -> Iterator[NetworkManager]:
    mgr = NetworkManager(str(tmp_path / "net"), str(tmp_path / "exec"), default_subnet="172.29.0.0/16",
                         bridge_name=unique("mrtb"))
    yield mgr
    mgr.close()


class Container:
    """A process in its own network and mount namespaces with a bind-mounted /etc/hosts, like a container."""

    def __init__(self, proc: subprocess.Popen, hosts_path: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.id = uuid.uuid4().hex + uuid.uuid4().hex
        self.hosts_path = hosts_path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.pid), "-n", "-m", *args], capture_output=True, text=True,
                              check=check, timeout=20)

    def socket(self, kind: int = socket.SOCK_STREAM) -> socket.socket:
        return in_netns_of(self.pid, lambda: socket.socket(socket.AF_INET, kind))


@pytest.fixture
def spawn(host: Host, tmp_path: Path) -> Iterator[Callable[[], Container]]:
    started: list[Container] = []

    def start() -> Container:
        hosts_path = tmp_path / (f"hosts-{len(started)}")
        hosts_path.write_text("127.0.0.1\tlocalhost\n")
        proc = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
                                 'mount --bind "$0" /etc/hosts && exec sleep 600', str(hosts_path)])
        container = Container(proc, str(hosts_path))
        started.append(container)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep":
            assert time.monotonic() < deadline, "container process did not start"
            time.sleep(0.005)
        return container

    yield start
    for container in started:
        container.proc.kill()
        container.proc.wait()


_servers: list[tuple[socket.socket, threading.Thread]] = []


@pytest.fixture(autouse=True)
def stop_servers() -> Iterator[None]:
    """Shuts the echo servers of a test down, so no socket keeps a deleted namespace alive."""
    yield
    while _servers:
        sock, thread = _servers.pop()
        with contextlib.suppress(OSError):  # a UDP socket says "not connected" but wakes its reader all the same
            sock.shutdown(socket.SHUT_RDWR)
        thread.join(5)
        sock.close()


def serve_echo(sock: socket.socket, kind: int) -> None:
    """Answers each TCP connection (with the client's address) or UDP datagram with the data upper-cased."""
    if kind == socket.SOCK_STREAM:
        sock.listen(8)

    def tcp() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(1024)
                conn.sendall(data.upper() + b" from %s" % conn.getpeername()[0].encode())

    def udp() -> None:
        while True:
            data, peer = sock.recvfrom(1024)
            if peer is None:  # shut down
                return
            sock.sendto(data.upper(), peer)

    thread = threading.Thread(target=tcp if kind == socket.SOCK_STREAM else udp, daemon=True)
    thread.start()
    _servers.append((sock, thread))


def tcp_ask(sock: socket.socket, address: tuple[str, int], data: bytes = b"hello") -> bytes:
    with sock:
        sock.settimeout(5)
        sock.connect(address)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(1024)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def udp_ask(sock: socket.socket, address: tuple[str, int], data: bytes = b"ping") -> bytes:
    with sock:
        sock.settimeout(5)
        sock.sendto(data, address)
        return sock.recvfrom(1024)[0]


def remote_socket(remote: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    return in_netns(remote, lambda: socket.socket(socket.AF_INET, kind))
