"""Dual-stack networks, chosen MAC and IPv6 addresses, --link entries, and the embedded DNS server at 127.0.0.11.

The "upstream" resolvers here live in the test's own host namespace on loopback: no query leaves the machine.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from machines.runtime.errors import Conflict, InvalidParameter
from machines.runtime.network import NetworkManager
from machines.runtime.network.links import in_netns_of

from .conftest import Container, Host, serve_echo, tcp_ask, unique


def query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def ask(container: Container, name: str, qtype: int = 1, tcp: bool = False) -> tuple[int, list[bytes]]:
    """(rcode, rdata of each answer) for a query sent to 127.0.0.11 from inside ``container``."""
    message = query(name, qtype)
    sock = container.socket(socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(10)
        sock.connect(("127.0.0.11", 53))
        if tcp:
            sock.sendall(struct.pack("!H", len(message)) + message)
            length = struct.unpack("!H", sock.recv(2))[0]
            data = b""
            while len(data) < length:
                data += sock.recv(length - len(data))
        else:
            sock.send(message)
            data = sock.recv(4096)
    ident, flags, _, count = struct.unpack_from("!HHHH", data)
    assert ident == 0x1234 and flags & 0x8000
    offset = len(message)
    answers = []
    for _ in range(count):
        offset += 2  # the compressed name pointer
        _, _, _, size = struct.unpack_from("!HHIH", data, offset)
        answers.append(data[offset + 10:offset + 10 + size])
        offset += 10 + size
    return flags & 0xF, answers


@pytest.fixture
def upstream(host: Host) -> Iterator[list[bytes]]:
    """A resolver on 127.0.0.1:53 of the test's host namespace answering every A query with 192.0.2.7."""
    seen: list[bytes] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            seen.append(data)
            header = struct.pack("!HHHHHH", struct.unpack("!H", data[:2])[0], 0x8180, 1, 1, 0, 0)
            answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("192.0.2.7")
            sock.sendto(header + data[12:] + answer, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield seen
    stop.set()
    thread.join(5)
    sock.close()


@pytest.fixture
def resolving(host: Host, tmp_path: Path) -> Iterator[NetworkManager]:
    """A manager whose host resolv.conf points at the loopback upstream above."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example.internal\nnameserver 127.0.0.1\n")
    mgr = NetworkManager(str(tmp_path / "net"), str(tmp_path / "exec"), default_subnet="172.29.0.0/16",
                         bridge_name=unique("mrtb"), resolv_conf=str(conf))
    yield mgr
    mgr.close()


def test_dual_stack_network_gives_both_addresses_and_carries_ipv6(host: Host, manager: NetworkManager,
                                                                   spawn: Callable[[], Container]) -> None:
    manager.create({"Name": "dual", "EnableIPv6": True, "IPAM": {"Config": [
        {"Subnet": "10.63.0.0/24"}, {"Subnet": "fd00:63::/64"}]}})
    web, client = spawn(), spawn()
    first = manager.connect("dual", web.id, web.pid, name="web", ipv6="fd00:63::99", mac="02:aa:bb:cc:dd:ee",
                            hosts_path=web.hosts_path)
    second = manager.connect("dual", client.id, client.pid, name="client", hosts_path=client.hosts_path)
    assert (first["IPAddress"], first["GlobalIPv6Address"], first["GlobalIPv6PrefixLen"]) == (
        "10.63.0.2", "fd00:63::99", 64)
    assert first["IPv6Gateway"] == "fd00:63::1" and first["MacAddress"] == "02:aa:bb:cc:dd:ee"
    assert second["GlobalIPv6Address"] == "fd00:63::2" and second["MacAddress"] == "02:42:0a:3f:00:03"
    assert "link/ether 02:aa:bb:cc:dd:ee" in web.run("ip", "-o", "link", "show", "dev", "eth0").stdout
    assert "inet6 fd00:63::99/64" in web.run("ip", "-o", "-6", "addr", "show", "dev", "eth0").stdout
    assert web.run("ip", "-6", "route", "show", "default").stdout.split()[:3] == ["default", "via", "fd00:63::1"]
    assert manager.inspect("dual")["Containers"][web.id]["IPv6Address"] == "fd00:63::99/64"
    assert "fd00:63::99\tweb" in open(client.hosts_path).read()

    listener = _v6_socket(web)
    listener.bind(("::", 8080))
    serve_echo(listener, socket.SOCK_STREAM)
    assert tcp_ask(_v6_socket(client), ("fd00:63::99", 8080)) == b"HELLO from fd00:63::2"

    with pytest.raises(Conflict, match="Address already in use"):
        manager.connect("dual", "x" * 64, client.pid, name="x", ipv6="fd00:63::99")
    with pytest.raises(InvalidParameter, match="invalid MAC address: 03:00:00:00:00:01"):
        manager.connect("dual", "x" * 64, client.pid, name="x", mac="03:00:00:00:00:01")
    manager.create({"Name": "auto"})
    with pytest.raises(InvalidParameter, match="only when connecting to networks with user configured subnets"):
        manager.connect("auto", "x" * 64, client.pid, name="x", ipv4="172.30.0.9")
    manager.create({"Name": "fixed", "IPAM": {"Config": [{"Subnet": "10.65.0.0/24"}]}})
    with pytest.raises(InvalidParameter, match="network fixed does not have IPv6 enabled"):
        manager.connect("fixed", "x" * 64, client.pid, name="x", ipv6="fd00:65::5")
    manager.release(web.id)
    manager.release(client.id)
    manager.close()  # the bridge outlives its last endpoint until the daemon stops
    assert host.leftovers() == ([], [])


def _v6_socket(container: Container) -> socket.socket:
    return in_netns_of(container.pid, lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM))


def test_embedded_dns_answers_names_aliases_ids_and_links(host: Host, resolving: NetworkManager, upstream: list[bytes],
                                                          spawn: Callable[[], Container]) -> None:
    resolving.create({"Name": "app", "EnableIPv6": True, "IPAM": {"Config": [
        {"Subnet": "10.64.0.0/24"}, {"Subnet": "fd00:64::/64"}]}})
    db, web, outsider = spawn(), spawn(), spawn()
    resolving.connect("app", db.id, db.pid, name="/db", aliases=["database"])
    resolving.connect("app", web.id, web.pid, name="web", links=[(db.id, ["sql", db.id[:12], "db"])])
    resolving.connect("bridge", outsider.id, outsider.pid, name="outsider")

    a_record = socket.inet_aton("10.64.0.2")
    for name in ("db", "DB", "database", db.id[:12], "db.app", "sql"):
        assert ask(web, name) == (0, [a_record]), name
    assert ask(web, "db", qtype=28) == (0, [socket.inet_pton(socket.AF_INET6, "fd00:64::2")])
    assert ask(web, "database", tcp=True) == (0, [a_record])
    assert ask(db, "sql") == (0, [socket.inet_aton("192.0.2.7")])  # the link is web's alone: db asks upstream
    assert ask(web, "2.0.64.10.in-addr.arpa", qtype=12)[1] == [b"\x02db\x03app\x00"]
    nslookup = web.run("busybox", "nslookup", "database", "127.0.0.11").stdout
    assert "10.64.0.2" in nslookup and "fd00:64::2" in nslookup

    before = len(upstream)
    assert ask(web, "elsewhere.example") == (0, [socket.inet_aton("192.0.2.7")])
    assert len(upstream) == before + 1 and b"\x09elsewhere\x07example" in upstream[-1]
    with pytest.raises(OSError):  # the default bridge has no embedded DNS
        ask(outsider, "db")

    resolving.disconnect("app", db.id)
    assert ask(web, "db") == (0, [socket.inet_aton("192.0.2.7")])  # gone from the network: not ours any more
    resolving.release(db.id)
    resolving.release(web.id)
    resolving.release(outsider.id)
    resolving.close()
    assert host.leftovers() == ([], [])


def test_unreachable_upstreams_give_servfail_quickly(host: Host, tmp_path: Path,
                                                      spawn: Callable[[], Container]) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\nnameserver 127.0.0.2\n")  # nothing listens in this namespace
    manager = NetworkManager(str(tmp_path / "net"), str(tmp_path / "exec"), bridge_name=unique("mrtb"),
                             resolv_conf=str(conf))
    try:
        manager.create({"Name": "lonely"})
        box, peer = spawn(), spawn()
        manager.connect("lonely", box.id, box.pid, name="box")
        manager.connect("lonely", peer.id, peer.pid, name="peer", dns=["127.0.0.3"])
        assert ask(box, "nowhere.example") == (2, [])
        assert ask(peer, "nowhere.example", tcp=True) == (2, [])
        assert ask(box, "peer")[0] == 0
        manager.release(box.id)
        manager.release(peer.id)
    finally:
        manager.close()
    assert host.leftovers() == ([], [])


def test_links_on_the_default_bridge_go_into_hosts_and_can_be_removed(host: Host, manager: NetworkManager,
                                                                       spawn: Callable[[], Container]) -> None:
    db, web = spawn(), spawn()
    manager.connect("bridge", db.id, db.pid, name="db", hosts_path=db.hosts_path, hostname="dbhost")
    manager.connect("bridge", web.id, web.pid, name="web", hosts_path=web.hosts_path,
                    links=[(db.id, ["sql", "dbhost", "db"])])
    assert "172.29.0.2\tsql dbhost db\n" in open(web.hosts_path).read()
    assert web.run("getent", "hosts", "sql").stdout.split()[0] == "172.29.0.2"
    manager.unlink(web.id, "sql")
    assert "sql" not in open(web.hosts_path).read()
    manager.release(db.id)
    manager.release(web.id)
    manager.close()
    assert host.leftovers() == ([], [])


def test_dns_answers_again_after_a_daemon_restart(host: Host, tmp_path: Path, spawn: Callable[[], Container]) -> None:
    def manager() -> NetworkManager:
        return NetworkManager(str(tmp_path / "net"), str(tmp_path / "exec"), bridge_name="mrtbr" + host.name[-6:],
                              resolv_conf=str(tmp_path / "none.conf"))

    first = manager()
    first.create({"Name": "kept", "IPAM": {"Config": [{"Subnet": "10.66.0.0/24"}]}})
    one, two = spawn(), spawn()
    first.connect("kept", one.id, one.pid, name="one")
    first.connect("kept", two.id, two.pid, name="two")
    assert ask(one, "two") == (0, [socket.inet_aton("10.66.0.3")])
    first.close()
    with pytest.raises(OSError):  # the daemon is down: nothing answers in the container
        ask(one, "two")
    again = manager()
    try:
        again.restore({one.id: one.pid, two.id: two.pid})
        assert ask(one, "two") == (0, [socket.inet_aton("10.66.0.3")])
        assert ask(two, "nowhere.example") == (2, [])  # no upstream at all: SERVFAIL
        again.release(one.id)
        again.release(two.id)
    finally:
        again.close()
    assert host.leftovers() == ([], [])


def test_malformed_queries_get_formerr_and_the_server_stays_up(host: Host, resolving: NetworkManager,
                                                               spawn: Callable[[], Container]) -> None:
    resolving.create({"Name": "rough", "IPAM": {"Config": [{"Subnet": "10.67.0.0/24"}]}})
    box = spawn()
    resolving.connect("rough", box.id, box.pid, name="box")
    pointer_loop = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
    truncated = query("box")[:-3]
    two_questions = struct.pack("!HHHHHH", 8, 0x0100, 2, 0, 0, 0) + query("box")[12:] * 2
    for garbage in (b"\x01", pointer_loop, truncated, two_questions, b"\xff" * 600):
        sock = box.socket(socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(10)
            sock.connect(("127.0.0.11", 53))
            sock.send(garbage)
            reply = sock.recv(4096)
        assert struct.unpack_from("!H", reply, 2)[0] & 0x800F == 0x8001  # a response, FORMERR
    with box.socket(socket.SOCK_STREAM) as sock:  # a TCP client that sends half a message and leaves
        sock.connect(("127.0.0.11", 53))
        sock.sendall(b"\x00\x40abc")
    assert ask(box, "box") == (0, [socket.inet_aton("10.67.0.2")])
    idle = []
    for _ in range(100):  # a flood of TCP clients that never send: UDP keeps answering meanwhile
        sock = box.socket(socket.SOCK_STREAM)
        sock.connect(("127.0.0.11", 53))
        idle.append(sock)
    assert ask(box, "box") == (0, [socket.inet_aton("10.67.0.2")])
    for sock in idle:
        sock.close()
    deadline = time.monotonic() + 20
    while True:  # the server's slots come back as it sees the clients go
        try:
            assert ask(box, "box", tcp=True) == (0, [socket.inet_aton("10.67.0.2")])
            break
        except (OSError, struct.error):
            assert time.monotonic() < deadline, "TCP service did not come back after the flood"
            time.sleep(0.1)
    resolving.release(box.id)
    resolving.close()
    assert host.leftovers() == ([], [])
