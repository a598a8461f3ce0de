"""Swarm mode's ports on Azure (issue 13): rules on each member's NSG that admit them from the virtual network only
(the ``VirtualNetwork`` service tag, never the Internet), gone when the member leaves. Against the fake ARM."""

from __future__ import annotations

from pathlib import Path

from machines.swarm import SWARM_PORTS

from .fakearm import FakeArm
from .test_driver import created, inbound, make_driver


def test_swarm_ports_open_from_the_vnet_only_and_go_when_the_member_leaves(arm: FakeArm, tmp_path: Path) -> None:
    driver = make_driver(arm, tmp_path, allow_cidr=["198.51.100.0/24"])
    created(driver)
    try:
        before = inbound(arm)
        driver.open_cluster_ports("web", SWARM_PORTS)
        added = inbound(arm) - before
        assert added == {("2377", "Tcp", "VirtualNetwork"), ("7946", "Tcp", "VirtualNetwork"),
                         ("7946", "Udp", "VirtualNetwork"), ("4789", "Udp", "VirtualNetwork")}
        driver.open_cluster_ports("web", SWARM_PORTS)  # again (provisioning twice): the same rules, not twice
        assert len(arm.find("networkSecurityGroups")["properties"]["securityRules"]) == len(before) + 4
        assert driver.private_ip() == arm.find("networkInterfaces")["properties"]["ipConfigurations"][0][
            "properties"]["privateIPAddress"]

        driver.close_cluster_ports("web", last=True)
        assert inbound(arm) == before  # the machine's own rules stay, the cluster's are gone
    finally:
        driver.remove()
    assert not list(arm.ids("networkSecurityGroups"))
