"""Published ports: TCP and UDP from loopback and from another host, random ports, conflicts, restore."""
from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from machines.runtime.errors import HostError
from machines.runtime.network import NetworkManager
from machines.runtime.network.proxy import bind_socket

from .conftest import REMOTE_HOST_IP, REMOTE_PEER_IP, Container, Host, remote_socket, serve_echo, tcp_ask, udp_ask


def running_echo(spawn: Callable[[], Container], manager: NetworkManager) -> tuple[Container, str]:
    """A container on the default bridge answering TCP on 80 and UDP on 53."""
    box = spawn()
    address = manager.connect("bridge", box.id, box.pid, name="echo")["IPAddress"]
    for kind, port in ((socket.SOCK_STREAM, 80), (socket.SOCK_DGRAM, 53)):
        sock = box.socket(kind)
        sock.bind(("0.0.0.0", port))
        serve_echo(sock, kind)
    return box, address


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_tcp_and_udp_from_loopback_and_from_another_host(host: Host, remote: str, manager: NetworkManager,
                                                         spawn: Callable[[], Container]) -> None:
    box, address = running_echo(spawn, manager)
    fixed = free_port()
    ports = manager.publish(box.id, address, {
        "80/tcp": [{"HostIp": "", "HostPort": ""}],
        "53/udp": [{"HostIp": "", "HostPort": "0"}],
        "80": [{"HostIp": "127.0.0.1", "HostPort": str(fixed)}],
    }, exposed=["80/tcp", "53/udp", "9000/tcp"])

    assert ports["9000/tcp"] is None
    random_tcp = ports["80/tcp"][0]
    assert random_tcp["HostIp"] == "0.0.0.0" and 32768 <= int(random_tcp["HostPort"]) <= 60999
    assert ports["80/tcp"][1] == {"HostIp": "127.0.0.1", "HostPort": str(fixed)}
    tcp_port, udp_port = int(random_tcp["HostPort"]), int(ports["53/udp"][0]["HostPort"])

    gateway = "172.29.0.1"
    assert tcp_ask(socket.socket(), ("127.0.0.1", tcp_port)) == b"HELLO from " + gateway.encode()
    assert tcp_ask(socket.socket(), ("127.0.0.1", fixed)) == b"HELLO from " + gateway.encode()
    assert udp_ask(socket.socket(type=socket.SOCK_DGRAM), ("127.0.0.1", udp_port)) == b"PING"
    # From another host the iptables DNAT path answers, and the container sees the client's own address.
    assert tcp_ask(remote_socket(remote), (REMOTE_HOST_IP, tcp_port)) == b"HELLO from " + REMOTE_PEER_IP.encode()
    assert udp_ask(remote_socket(remote, socket.SOCK_DGRAM), (REMOTE_HOST_IP, udp_port)) == b"PING"
    with pytest.raises(ConnectionRefusedError):
        tcp_ask(remote_socket(remote), (REMOTE_HOST_IP, fixed))

    with pytest.raises(HostError, match=f"Bind for 0.0.0.0:{tcp_port} failed: port is already allocated"):
        manager.publish("other", address, {"80/tcp": [{"HostPort": str(tcp_port)}]})
    manager.unpublish(box.id)
    bind_socket("tcp", "0.0.0.0", tcp_port).close()
    manager.release(box.id)
    manager.close()  # the bridge outlives its last endpoint until the daemon stops
    assert host.leftovers() == ([], [])


def test_publish_all_and_restore_after_restart(host: Host, manager: NetworkManager, tmp_path: Path,
                                               spawn: Callable[[], Container]) -> None:
    box, address = running_echo(spawn, manager)
    gone = spawn()
    gone_address = manager.connect("bridge", gone.id, gone.pid, name="gone")["IPAddress"]
    ports = manager.publish(box.id, address, {}, exposed=["80/tcp", "53/udp"], publish_all=True)
    tcp_port, udp_port = int(ports["80/tcp"][0]["HostPort"]), int(ports["53/udp"][0]["HostPort"])
    manager.publish(gone.id, gone_address, {"80/tcp": [{}]})
    manager.close()
    with pytest.raises(ConnectionRefusedError):
        tcp_ask(socket.socket(), ("127.0.0.1", tcp_port))

    gone.proc.kill()
    gone.proc.wait()
    bridge = manager.bridge_name
    again = NetworkManager(str(tmp_path / "net"), str(tmp_path / "exec"), default_subnet="172.29.0.0/16",
                           bridge_name=bridge)
    try:
        again.restore({box.id: box.pid})
        assert tcp_ask(socket.socket(), ("127.0.0.1", tcp_port)).startswith(b"HELLO")
        assert udp_ask(socket.socket(type=socket.SOCK_DGRAM), ("127.0.0.1", udp_port)) == b"PING"
        assert list(again.inspect("bridge")["Containers"]) == [box.id]
        again.release(box.id)
        again.close()  # the bridge outlives its last endpoint until the daemon stops
        assert host.leftovers() == ([], [])
        assert not again.endpoints(box.id) and again.inspect("bridge")["Containers"] == {}
    finally:
        again.close()


def test_host_port_ranges_and_ipv6_host_addresses(host: Host, manager: NetworkManager,
                                                   spawn: Callable[[], Container]) -> None:
    box, address = running_echo(spawn, manager)
    first = free_port()
    with bind_socket("tcp", "0.0.0.0", first):
        ports = manager.publish(box.id, address, {"80/tcp": [{"HostPort": f"{first}-{first + 1}"}]})
        assert ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(first + 1)}]}
    ipv6 = manager.publish(box.id, address, {"80/tcp": [{"HostIp": "::1"}]})["80/tcp"][0]
    assert ipv6["HostIp"] == "::1"
    assert tcp_ask(socket.socket(socket.AF_INET6), ("::1", int(ipv6["HostPort"]))).startswith(b"HELLO")
    manager.release(box.id)
    manager.close()  # the bridge outlives its last endpoint until the daemon stops
    assert host.leftovers() == ([], [])


def test_without_iptables_the_proxy_serves_other_hosts(host: Host, remote: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       spawn: Callable[[], Container]) -> None:
    """A host without iptables: no DNAT and no NAT rules, yet published ports work from anywhere."""
    monkeypatch.setenv("PATH", str(tmp_path))  # the daemon looks for iptables once, when it starts
    manager = NetworkManager(str(tmp_path / "net"), str(tmp_path / "exec"), bridge_name="mrtplain0")
    monkeypatch.undo()
    try:
        box, address = running_echo(spawn, manager)
        ports = manager.publish(box.id, address, {"80/tcp": [{}], "53/udp": [{}]})
        tcp_port, udp_port = int(ports["80/tcp"][0]["HostPort"]), int(ports["53/udp"][0]["HostPort"])
        gateway = manager.inspect("bridge")["IPAM"]["Config"][0]["Gateway"]
        assert tcp_ask(remote_socket(remote), (REMOTE_HOST_IP, tcp_port)) == b"HELLO from " + gateway.encode()
        assert udp_ask(remote_socket(remote, socket.SOCK_DGRAM), (REMOTE_HOST_IP, udp_port)) == b"PING"
        assert host.leftovers()[1] == []
        manager.release(box.id)
        manager.close()  # the bridge outlives its last endpoint until the daemon stops
        assert host.leftovers() == ([], [])
    finally:
        manager.close()


def test_networks_are_isolated_but_published_ports_are_not(host: Host, manager: NetworkManager,
                                                           spawn: Callable[[], Container]) -> None:
    manager.create({"Name": "front", "IPAM": {"Config": [{"Subnet": "10.71.0.0/24"}]}})
    manager.create({"Name": "back", "IPAM": {"Config": [{"Subnet": "10.72.0.0/24"}]}})
    server, client = spawn(), spawn()
    address = manager.connect("back", server.id, server.pid, name="server")["IPAddress"]
    manager.connect("front", client.id, client.pid, name="client")
    listener = server.socket()
    listener.bind(("0.0.0.0", 80))
    serve_echo(listener, socket.SOCK_STREAM)
    port = int(manager.publish(server.id, address, {"80/tcp": [{}]})["80/tcp"][0]["HostPort"])

    probe = client.socket()
    probe.settimeout(0.5)
    with pytest.raises(socket.timeout), probe:
        probe.connect((address, 80))
    assert tcp_ask(client.socket(), ("10.71.0.1", port)).startswith(b"HELLO")

    manager.release(server.id)
    manager.release(client.id)
    manager.close()  # the bridge outlives its last endpoint until the daemon stops
    assert host.leftovers() == ([], [])
