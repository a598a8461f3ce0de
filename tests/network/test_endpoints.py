"""Containers on bridges: addresses, routes, reaching each other by address and by name, outbound NAT, cleanup."""
from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

import pytest

from machines.runtime.errors import Forbidden, HostError, InvalidParameter
from machines.runtime.network import NetworkManager, hosts
from tests.support.waiting import poll

from .conftest import REMOTE_HOST_IP, REMOTE_PEER_IP, Container, Host, remote_socket, serve_echo, tcp_ask


def ping(source: Container, target: str) -> None:
    source.run("busybox", "ping", "-c", "1", "-W", "3", target)


def resolve(container: Container, name: str) -> str:
    return container.run("getent", "ahostsv4", name).stdout.split()[0]


def test_user_network_connects_containers_by_name(host: Host, manager: NetworkManager,
                                                   spawn: Callable[[], Container]) -> None:
    net_id = manager.create({"Name": "app", "IPAM": {"Config": [{"Subnet": "10.61.0.0/24"}]}})["Id"]
    web, client = spawn(), spawn()
    web_inode = os.stat(web.hosts_path).st_ino
    first = manager.connect("app", web.id, web.pid, name="/web", aliases=["frontend", web.id[:12]],
                            hosts_path=web.hosts_path)
    second = manager.connect(net_id[:12], client.id, client.pid, name="client", hosts_path=client.hosts_path)

    assert first["NetworkID"] == net_id and first["Gateway"] == "10.61.0.1" and first["IPPrefixLen"] == 24
    assert first["IPAddress"] == "10.61.0.2" and second["IPAddress"] == "10.61.0.3"
    assert first["MacAddress"] == "02:42:0a:3d:00:02"
    assert first["DNSNames"] == ["web", web.id[:12], "frontend"]
    assert "inet 10.61.0.2/24" in web.run("ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert web.run("ip", "route", "show", "default").stdout.split()[:3] == ["default", "via", "10.61.0.1"]

    assert resolve(client, "web") == resolve(client, "frontend") == resolve(client, web.id[:12]) == "10.61.0.2"
    assert resolve(web, "client") == "10.61.0.3"
    assert os.stat(web.hosts_path).st_ino == web_inode
    assert open(web.hosts_path).read().startswith("127.0.0.1\tlocalhost\n")
    ping(client, "web")
    server = web.socket()
    server.bind(("0.0.0.0", 8080))
    serve_echo(server, socket.SOCK_STREAM)
    assert tcp_ask(client.socket(), ("10.61.0.2", 8080)) == b"HELLO from 10.61.0.3"

    containers = manager.inspect("app")["Containers"]
    assert containers[web.id] == {"Name": "web", "EndpointID": first["EndpointID"], "MacAddress": first["MacAddress"],
                                  "IPv4Address": "10.61.0.2/24", "IPv6Address": ""}
    with pytest.raises(Forbidden, match="has active endpoints"):
        manager.remove("app")
    with pytest.raises(Forbidden, match="already exists in network app"):
        manager.connect("app", web.id, web.pid, name="web")

    manager.disconnect("app", client.id)
    assert "client" not in open(web.hosts_path).read()
    assert list(manager.inspect("app")["Containers"]) == [web.id]
    manager.release(web.id)
    manager.remove("app")
    assert host.leftovers() == ([], [])


def test_default_bridge_has_no_name_resolution(host: Host, manager: NetworkManager,
                                               spawn: Callable[[], Container]) -> None:
    one, two = spawn(), spawn()
    first = manager.connect("bridge", one.id, one.pid, name="one", hosts_path=one.hosts_path, hostname="box1")
    second = manager.connect("bridge", two.id, two.pid, name="two", hosts_path=two.hosts_path)
    assert first["IPAddress"] == "172.29.0.2" and first["Gateway"] == "172.29.0.1" and first["DNSNames"] is None
    assert open(one.hosts_path).read().endswith("172.29.0.2\tbox1\n")
    assert open(two.hosts_path).read().splitlines()[1:] == [hosts.MARKER, f"172.29.0.3\t{two.id[:12]}"]
    ping(one, second["IPAddress"])
    with pytest.raises(InvalidParameter, match="user defined networks only"):
        manager.connect("bridge", "c" * 64, one.pid, name="three", ipv4="172.29.0.9")
    with pytest.raises(InvalidParameter, match="network-scoped alias is supported only"):
        manager.connect("bridge", "c" * 64, one.pid, name="three", aliases=["web"])
    assert set(manager.inspect("bridge")["Containers"]) == {one.id, two.id}

    manager.release(one.id)
    manager.release(two.id)
    poll("the released veths deleted and the bridge kept (as dockerd keeps docker0)",
         lambda: host.leftovers()[0] == [manager.bridge_name])
    assert host.leftovers()[1]  # its rules stay with it
    manager.close()  # the daemon stops: no bridge is left behind
    assert host.leftovers() == ([], [])
    assert manager.inspect("bridge")["Containers"] == {}


def test_outbound_nat_and_internal_networks(host: Host, remote: str, manager: NetworkManager,
                                            spawn: Callable[[], Container]) -> None:
    """The remote host has no route back to the container subnet, so only masquerading lets the reply return."""
    outside = remote_socket(remote)
    outside.bind((REMOTE_PEER_IP, 9000))
    serve_echo(outside, socket.SOCK_STREAM)
    manager.create({"Name": "sealed", "Internal": True})
    box, sealed = spawn(), spawn()
    manager.connect("bridge", box.id, box.pid, name="box")
    manager.connect("sealed", sealed.id, sealed.pid, name="sealed")

    assert tcp_ask(box.socket(), (REMOTE_PEER_IP, 9000)) == b"HELLO from %s" % REMOTE_HOST_IP.encode()
    assert open("/proc/sys/net/ipv4/ip_forward").read().strip() == "1"
    assert sealed.run("ip", "route", "show", "default").stdout == ""
    with pytest.raises(OSError):
        tcp_ask(sealed.socket(), (REMOTE_PEER_IP, 9000))

    manager.release(box.id)
    manager.release(sealed.id)
    manager.close()  # the bridge outlives its last endpoint until the daemon stops
    assert host.leftovers() == ([], [])


def test_second_network_gets_eth1_and_concurrent_connects_get_distinct_addresses(
        host: Host, manager: NetworkManager, spawn: Callable[[], Container]) -> None:
    manager.create({"Name": "back", "IPAM": {"Config": [{"Subnet": "10.62.0.0/24", "IPRange": "10.62.0.128/25"}]}})
    containers = [spawn() for _ in range(4)]
    results = {}

    def join(container: Container) -> None:
        results[container.id] = manager.connect("bridge", container.id, container.pid, name=container.id[:5])

    threads = [threading.Thread(target=join, args=(c,)) for c in containers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({settings["IPAddress"] for settings in results.values()}) == 4

    dual = containers[0]
    extra = manager.connect("back", dual.id, dual.pid, name="dual", ipv4="10.62.0.200")
    assert extra["IPAddress"] == "10.62.0.200"
    assert "inet 10.62.0.200/24" in dual.run("ip", "-o", "addr", "show", "dev", "eth1").stdout
    assert set(manager.endpoints(dual.id)) == {"bridge", "back"}
    manager.disconnect("bridge", dual.id)
    assert dual.run("ip", "route", "show", "default").stdout.split()[:3] == ["default", "via", "10.62.0.1"]
    auto = manager.connect("back", containers[1].id, containers[1].pid, name="auto")
    assert auto["IPAddress"] == "10.62.0.129"  # the first address of the IPRange

    for container in containers:
        manager.release(container.id)
    manager.close()  # the bridge outlives its last endpoint until the daemon stops
    assert host.leftovers() == ([], [])


def test_host_and_none_networks_record_membership(host: Host, manager: NetworkManager,
                                                  spawn: Callable[[], Container]) -> None:
    isolated = spawn()
    settings = manager.connect("none", isolated.id, isolated.pid, name="alone", hosts_path=isolated.hosts_path)
    assert settings["IPAddress"] == "" and settings["NetworkID"] == manager.inspect("none")["Id"]
    assert "state UNKNOWN" in isolated.run("ip", "-o", "link", "show", "dev", "lo").stdout
    assert isolated.run("ip", "-o", "link", "show").stdout.count("\n") == 1
    with pytest.raises(InvalidParameter, match="private \\(none\\) mode"):
        manager.connect("bridge", isolated.id, isolated.pid, name="alone")
    manager.connect("host", "h" * 64, os.getpid(), name="hostly")
    assert manager.inspect("host")["Containers"]["h" * 64]["Name"] == "hostly"
    with pytest.raises(InvalidParameter, match="host network"):
        manager.disconnect("host", "h" * 64)
    manager.release("h" * 64)
    manager.release(isolated.id)
    assert manager.inspect("none")["Containers"] == manager.inspect("host")["Containers"] == {}
    assert host.leftovers() == ([], [])


def test_a_failed_connect_leaves_nothing_behind(host: Host, manager: NetworkManager,
                                                spawn: Callable[[], Container]) -> None:
    dead = spawn()
    dead.proc.kill()
    dead.proc.wait()
    with pytest.raises(HostError, match="No such process"):
        manager.connect("bridge", dead.id, dead.pid, name="dead", hosts_path=dead.hosts_path)
    assert manager.inspect("bridge")["Containers"] == {} and manager.endpoints(dead.id) == {}
    assert host.leftovers() == ([], [])
    alive = spawn()
    assert manager.connect("bridge", alive.id, alive.pid, name="alive")["IPAddress"] == "172.29.0.3"
    manager.release(alive.id)
