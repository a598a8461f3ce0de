"""IsolatedHost directly: isolation, lifecycle and a removal that leaves nothing behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid

from machines.drivers.nshost import HostState
from tests.support.hosts import HostFactory, leftovers, remaining

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_hosts_are_isolated_from_each_other_and_the_machine(test_host: HostFactory) -> None:
    a, b = test_host(), test_host()
    assert a.run("hostname").stdout.strip() == a.name
    assert a.run("cat /etc/hostname").stdout.strip() == a.name
    assert a.run("ps -e -o pid=,comm=").stdout.split()[:2] == ["1", "sshd"]
    addresses = a.run("ip -4 -o addr show dev eth0").stdout
    assert f"inet {a.address}/" in addresses and a.address != b.address
    assert "default" not in a.run("ip route").stdout
    assert a.run("cat /etc/resolv.conf").stdout == "nameserver 127.0.0.1\n"
    assert a.run("cat /root/.bashrc").stdout == ""
    a.run("echo secret > /etc/only-on-a && echo data > /data/only-on-a")
    assert b.run("test -e /etc/only-on-a", check=False).exit_status == 1
    assert b.run("test -e /data/only-on-a", check=False).exit_status == 1
    assert not os.path.exists("/etc/only-on-a") and not os.path.exists("/data/only-on-a")
    # the hosts reach each other on the bridge
    assert b.run(f"exec 3<>/dev/tcp/{a.address}/22 && head -c 7 <&3").stdout == "SSH-2.0"


def test_cgroups_and_nested_overlay_work_inside_a_host(test_host: HostFactory) -> None:
    host = test_host()
    other = test_host()
    controllers = host.run("ls /sys/fs/cgroup").stdout.split()
    assert {"memory", "pids", "cpu", "cpuset", "unified"} <= set(controllers)
    # each host has cgroup trees of its own, as a container runtime inside expects
    group = f"/sys/fs/cgroup/pids/runtime{uuid.uuid4().hex[:8]}"
    host.run(f"mkdir -p {group}/c1 && sh -c 'echo $$ > {group}/c1/cgroup.procs'")
    assert other.run(f"test -e {group}", check=False).exit_status == 1
    assert host.run("cat /proc/self/cgroup").stdout.count(":/\n") >= len(controllers) - 1
    script = ("mkdir -p /data/l /data/u /data/w /data/m && echo layered > /data/l/f && "
              "mount -t overlay o -o lowerdir=/data/l,upperdir=/data/u,workdir=/data/w /data/m && "
              "cat /data/m/f && umount /data/m")
    assert host.run(script).stdout == "layered\n"
    namespaces = host.namespaces()
    assert namespaces.cgroups and all(os.path.isdir(f"{folder}") for folder in namespaces.cgroups)
    host.stop()  # the host's cgroups go with it, including those made inside
    assert remaining(namespaces) == []


def test_stop_ends_every_process_and_start_keeps_files(test_host: HostFactory) -> None:
    host = test_host()
    host.run("echo kept > /root/kept && echo kept > /data/kept")
    host.run("setsid sleep 1000 </dev/null >/dev/null 2>&1 &")
    namespaces = host.namespaces()
    host.stop()
    assert host.host.state() is HostState.STOPPED
    assert remaining(namespaces) == []
    with socket.socket() as probe:
        probe.settimeout(1)
        assert probe.connect_ex((host.address, 22)) != 0
    host.start()
    assert host.host.state() is HostState.RUNNING
    assert host.run("cat /root/kept /data/kept").stdout == "kept\nkept\n"
    assert "sleep" not in host.run("ps -e -o comm=").stdout


def test_kill_stops_the_host_at_once(test_host: HostFactory) -> None:
    host = test_host()
    namespaces = host.namespaces()
    host.kill()
    assert host.host.state() is HostState.STOPPED
    assert remaining(namespaces) == []
    host.start()
    assert host.run("hostname").stdout.strip() == host.name


def test_host_survives_its_python_process_and_remove_leaves_nothing(test_host: HostFactory) -> None:
    host = test_host(start=False)
    started = subprocess.run(
        [sys.executable, "-c", "import sys; from machines.drivers.nshost import IsolatedHost; IsolatedHost(sys.argv[1]).start()",
         host.host.state_dir], capture_output=True, text=True, cwd=REPO)
    assert started.returncode == 0, started.stderr
    assert host.host.state() is HostState.RUNNING
    host.address = host.host.address
    assert host.run("hostname").stdout.strip() == host.name
    record, namespaces = host.record, host.namespaces()
    host.close()
    host.host.remove()
    assert host.host.state() is HostState.NOT_FOUND
    assert leftovers(record, namespaces) == []
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.find(record.netns) == -1
    assert record.veth not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def test_addresses_are_unique_under_concurrent_creates(test_host: HostFactory) -> None:
    hosts: list = []
    errors: list[BaseException] = []

    def make() -> None:
        try:
            hosts.append(test_host(start=False))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=make) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({host.address for host in hosts}) == 6


def test_loopback_service_reachable_through_forward(test_host: HostFactory) -> None:
    host = test_host()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def answer() -> None:
        connection, _ = server.accept()
        with connection:
            connection.sendall(b"hello from the machine\n")

    threading.Thread(target=answer, daemon=True).start()
    with host.forward_loopback(port):
        output = host.run(f"exec 3<>/dev/tcp/127.0.0.1/{port} && head -n1 <&3").stdout
    assert output == "hello from the machine\n"
    server.close()


def test_start_brings_back_a_network_lost_while_stopped(test_host: HostFactory) -> None:
    host = test_host()
    host.run("echo kept > /root/kept")
    host.stop()
    record = host.record
    # what a reboot of the machine does: namespaces and links are gone, the files stay
    subprocess.run(["ip", "link", "del", record.veth], check=True)
    subprocess.run(["ip", "netns", "del", record.netns], check=True)
    host.start()
    assert host.run("cat /root/kept").stdout == "kept\n"
    assert f"inet {host.address}/" in host.run("ip -4 -o addr show dev eth0").stdout
