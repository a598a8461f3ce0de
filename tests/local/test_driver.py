"""The local driver through the library: lifecycle, pinned host key, checks, and a create that fails half way."""

from __future__ import annotations

import os
import socket
import uuid
from base64 import b64decode
from pathlib import Path

import paramiko
import pytest

import machines.drivers.nshost as nshost
from machines.drivers.base import Ledger, State
from machines.drivers.local import LocalDriver
from machines.drivers.nshost import Bridge, IsolatedHost, NsHostError
from machines.errors import PreCreateError
from machines.machine import Machines
from machines.store import generate_ssh_key
from tests.support.hosts import Namespaces, TestHost, leftovers


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 1000}{uuid.uuid4().hex[:5]}"


@pytest.fixture
def driver(tmp_path: Path, test_bridge: Bridge) -> LocalDriver:
    name = unique("d")
    folder = tmp_path / name
    folder.mkdir()
    generate_ssh_key(folder, name)
    made = LocalDriver(name, str(folder), {"bridge": test_bridge.name, "subnet": test_bridge.subnet})
    yield made
    made.remove()


def test_driver_lifecycle_with_the_host_key_known_before_connecting(driver: LocalDriver) -> None:
    driver.pre_create_check()
    driver.create(Ledger())
    assert driver.state() is State.RUNNING
    details = driver.ssh_details()
    assert (details.host, details.port, details.user) == (driver.ip(), 22, "root")
    key_type, key_data = driver.initial_host_key().split()
    client = paramiko.SSHClient()
    client.get_host_keys().add(details.host, key_type, paramiko.PKey.from_type_string(key_type, b64decode(key_data)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())  # an unknown key would be refused
    client.connect(details.host, details.port, details.user, key_filename=details.key_path, look_for_keys=False,
                   allow_agent=False)
    _, stdout, _ = client.exec_command("hostname")
    assert stdout.read().decode().strip() == driver.machine_name
    client.close()

    host = IsolatedHost(os.path.join(driver.store_dir, "host"))
    first = host.pid
    driver.restart()
    assert driver.state() is State.RUNNING and host.pid not in (None, first)
    driver.stop()
    assert driver.state() is State.STOPPED
    driver.start()
    assert driver.state() is State.RUNNING
    driver.kill()
    assert driver.state() is State.STOPPED
    driver.start()
    namespaces = TestHost(host, Path(driver.ssh_key_path)).namespaces()
    record = host.record
    driver.remove()
    assert driver.state() is State.NOT_FOUND
    assert leftovers(record, namespaces) == []
    assert not os.path.exists(os.path.join(driver.store_dir, "host"))


def test_fixed_address_flag(driver: LocalDriver, test_bridge: Bridge) -> None:
    wanted = str(test_bridge.network.network_address + 200)
    driver.config["address"] = wanted
    driver.create(Ledger())
    assert driver.ip() == wanted
    with socket.create_connection((wanted, 22), timeout=5):
        pass


def test_pre_create_refuses_without_root_or_tools(driver: LocalDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PreCreateError, match="needs root"):
        driver.pre_create_check()
    monkeypatch.undo()
    monkeypatch.setitem(nshost.REQUIRED_TOOLS, "no-such-tool-x", "no-such-package-x")
    with pytest.raises(PreCreateError, match="no-such-tool-x .Debian package no-such-package-x."):
        driver.pre_create_check()
    monkeypatch.undo()
    driver.config["subnet"] = "10.213.0.1/33"
    with pytest.raises(PreCreateError, match="invalid subnet"):
        driver.pre_create_check()


def _fail_after_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: the namespace and veth exist, then the create fails."""
    make_network = IsolatedHost._make_network

    def failing(self: IsolatedHost, record: nshost.HostRecord, made: nshost.Recorder) -> None:
        make_network(self, record, made)
        raise NsHostError("injected fault after the network namespace")

    monkeypatch.setattr(IsolatedHost, "_make_network", failing)


def _fail_while_sshd_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: sshd runs in its namespaces and cgroups, then waiting for it fails."""
    def failing(self: IsolatedHost, record: nshost.HostRecord, process: object, timeout: float) -> None:
        raise NsHostError("injected fault while sshd starts")

    monkeypatch.setattr(IsolatedHost, "_wait_listening", failing)


@pytest.mark.parametrize("inject", [_fail_after_network, _fail_while_sshd_starts])
def test_create_failing_half_way_leaves_no_resource_and_no_entry(
    inject, tmp_path: Path, test_bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    machines = Machines(tmp_path / "store")
    name = unique("f")
    saved: list[nshost.HostRecord] = []
    save = IsolatedHost._save

    def spy(self: IsolatedHost, record: nshost.HostRecord) -> None:
        save(self, record)
        saved.append(nshost.HostRecord(**{**vars(record), "cgroups": list(record.cgroups)}))

    monkeypatch.setattr(IsolatedHost, "_save", spy)
    inject(monkeypatch)
    with pytest.raises(NsHostError, match="injected fault"):
        machines.create(name, "local", {"bridge": test_bridge.name, "subnet": test_bridge.subnet}, provision=False)
    assert machines.store.names() == []
    launched = tuple((record.pid, record.pid_start) for record in saved if record.pid)
    cgroups = tuple(folder for record in saved for folder in record.cgroups)
    assert bool(launched) == bool(cgroups) == (inject is _fail_while_sshd_starts)
    assert leftovers(saved[-1], Namespaces(launched, saved[-1].netns, cgroups)) == []
    assert not os.listdir(f"/sys/class/net/{test_bridge.name}/brif")


def test_a_taken_address_fails_the_create_and_leaves_no_entry(tmp_path: Path, test_bridge: Bridge) -> None:
    machines = Machines(tmp_path / "store")
    flags = {"bridge": test_bridge.name, "subnet": test_bridge.subnet}
    first = machines.create(unique("t"), "local", flags, provision=False)
    try:
        taken = first.driver.ip()
        with pytest.raises(NsHostError, match=f"address {taken} is already used"):
            machines.create(unique("u"), "local", {**flags, "address": taken}, provision=False)
        assert machines.store.names() == [first.name]
    finally:
        machines.remove(first.name)


def test_pre_create_refuses_a_subnet_another_interface_uses(driver: LocalDriver, test_bridge: Bridge) -> None:
    driver.config.update(bridge=f"mz{os.getpid() % 10**6}", subnet=test_bridge.subnet)
    with pytest.raises(PreCreateError, match=f"overlaps .* on interface {test_bridge.name}"):
        driver.pre_create_check()
