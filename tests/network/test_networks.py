"""Network objects as ``docker network`` shows them: create, inspect, list filters, remove, prune, persistence."""
from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import Conflict, Forbidden, InvalidParameter, NotFound
from runtime.network import NetworkManager


@pytest.fixture
def plain(tmp_path: Path) -> NetworkManager:
    """A manager that only keeps network objects: nothing here creates links, so no namespace is needed."""
    return NetworkManager(str(tmp_path / "net"), str(tmp_path / "exec"), default_subnet="172.28.0.0/16")


def test_predefined_networks_are_listed_and_protected(plain: NetworkManager) -> None:
    listed = {net["Name"]: net for net in plain.list()}
    assert set(listed) == {"bridge", "host", "none"}
    assert listed["bridge"]["Driver"] == "bridge" and listed["none"]["Driver"] == "null"
    assert listed["bridge"]["IPAM"]["Config"] == [{"Subnet": "172.28.0.0/16", "Gateway": "172.28.0.1"}]
    assert listed["bridge"]["Options"]["com.docker.network.bridge.name"] == "mrt0"
    for name in ("bridge", "host", "none"):
        with pytest.raises(Forbidden, match="%s is a pre-defined network and cannot be removed" % name):
            plain.remove(name)
    with pytest.raises(Conflict, match="network with name bridge already exists"):
        plain.create({"Name": "bridge"})
    with pytest.raises(NotFound, match='plugin "overlay" not found'):
        plain.create({"Name": "x", "Driver": "overlay"})
    with pytest.raises(NotFound, match="network nothere not found"):
        plain.inspect("nothere")


def test_create_inspect_and_filters(plain: NetworkManager) -> None:
    created = plain.create({"Name": "web", "Labels": {"tier": "front"}, "CheckDuplicate": True})
    assert len(created["Id"]) == 64 and created["Warning"] == ""
    fixed = plain.create({"Name": "db", "Internal": True,
                          "IPAM": {"Config": [{"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.254"}]}})
    web = plain.inspect(created["Id"][:10])
    assert web["Name"] == "web" and web["Driver"] == "bridge" and web["Scope"] == "local"
    assert web["Labels"] == {"tier": "front"} and web["Containers"] == {}
    subnet = web["IPAM"]["Config"][0]["Subnet"]
    assert subnet.startswith("172.3") and subnet.endswith("/24")
    db = plain.inspect("db")
    assert db["Id"] == fixed["Id"] and db["Internal"] is True
    assert db["IPAM"]["Config"] == [{"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.254"}]

    with pytest.raises(Conflict, match="network with name web already exists"):
        plain.create({"Name": "web"})
    with pytest.raises(Forbidden, match="Pool overlaps"):
        plain.create({"Name": "clash", "IPAM": {"Config": [{"Subnet": "10.77.0.128/25"}]}})
    with pytest.raises(InvalidParameter, match="no matching subnet for gateway 10.1.0.1"):
        plain.create({"Name": "bad", "IPAM": {"Config": [{"Subnet": "10.78.0.0/24", "Gateway": "10.1.0.1"}]}})

    def names(filters: dict) -> set:
        return {net["Name"] for net in plain.list(filters)}

    assert names({"type": ["custom"]}) == {"web", "db"}
    assert names({"type": ["builtin"]}) == {"bridge", "host", "none"}
    assert names({"label": ["tier=front"]}) == {"web"}
    assert names({"name": {"we": True}}) == {"web"}
    assert names({"driver": ["null"]}) == {"none"}
    assert names({"dangling": ["true"]}) == {"web", "db"}
    assert names({"id": [fixed["Id"][:12]]}) == {"db"}
    with pytest.raises(InvalidParameter, match="invalid filter 'color'"):
        plain.list({"color": ["red"]})


def test_state_survives_a_new_manager_and_prune(plain: NetworkManager, tmp_path: Path) -> None:
    web = plain.create({"Name": "web", "Labels": {"keep": "yes"}})["Id"]
    plain.create({"Name": "tmp1"})
    plain.create({"Name": "tmp2"})
    again = NetworkManager(str(tmp_path / "net"), str(tmp_path / "exec"), default_subnet="172.28.0.0/16")
    assert {net["Name"] for net in again.list()} == {"bridge", "host", "none", "web", "tmp1", "tmp2"}
    assert again.inspect("bridge")["Id"] == plain.inspect("bridge")["Id"]
    assert sorted(again.prune({"label!": ["keep"]})["NetworksDeleted"]) == ["tmp1", "tmp2"]
    assert again.prune({"until": ["1h"]}) == {"NetworksDeleted": []}
    assert again.prune() == {"NetworksDeleted": ["web"]}
    with pytest.raises(NotFound):
        again.inspect(web)
    assert {net["Name"] for net in again.list()} == {"bridge", "host", "none"}
