"""What a killed daemon leaves on the host: its bridge's firewall rules outlive it (a reboot removes the bridge, not
the rules); the next daemon removes them once it serves (``sweep``), or before the bridge is used again."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from machines.runtime.network import NetworkManager

from .conftest import Container, Host, sh


def _killed_with_a_container(manager: NetworkManager, spawn: Callable[[], Container]) -> list[str]:
    """The bridge's rules as a killed daemon leaves them after a reboot: no close, the container and bridge gone."""
    box = spawn()
    manager.connect("bridge", box.id, box.pid, name="box")
    box.proc.kill()
    box.proc.wait()
    sh("ip", "link", "del", manager.bridge_name)
    left = _rules(manager.bridge_name)
    assert left, "the bridge had rules"
    return left


def _rules(bridge: str) -> list[str]:
    return sorted(line for line in sh("iptables-save").splitlines() if bridge in line)


def _next_daemon(tmp_path: Path, bridge: str) -> NetworkManager:
    return NetworkManager(str(tmp_path / "net"), str(tmp_path / "exec"), default_subnet="172.29.0.0/16",
                          bridge_name=bridge)


def test_the_next_daemon_sweeps_a_gone_bridges_rules(host: Host, manager: NetworkManager, tmp_path: Path,
                                                     spawn: Callable[[], Container]) -> None:
    _killed_with_a_container(manager, spawn)
    again = _next_daemon(tmp_path, manager.bridge_name)
    try:
        again.restore({})
        again.sweep()
        assert host.leftovers() == ([], [])
        assert again.inspect("bridge")["Containers"] == {}
    finally:
        again.close()


def test_a_bridge_used_before_the_sweep_gets_its_rules_once(host: Host, manager: NetworkManager, tmp_path: Path,
                                                            spawn: Callable[[], Container]) -> None:
    left = _killed_with_a_container(manager, spawn)
    again = _next_daemon(tmp_path, manager.bridge_name)
    try:
        again.restore({})
        other = spawn()
        again.connect("bridge", other.id, other.pid, name="other")
        assert _rules(manager.bridge_name) == left  # the old ones went first: each rule once, not twice
        again.sweep()  # nothing left to sweep: the bridge in use keeps its rules
        assert _rules(manager.bridge_name) == left
        again.release(other.id)
        again.close()
        assert host.leftovers() == ([], [])
    finally:
        again.close()
