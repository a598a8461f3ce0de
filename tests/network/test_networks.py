"""Network objects as ``docker network`` shows them: create, inspect, list filters, remove, prune, persistence."""
from __future__ import annotations

from pathlib import Path

import pytest

from machines.runtime.errors import Conflict, Forbidden, InvalidParameter, NotFound
from machines.runtime.network import NetworkManager


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
        with pytest.raises(Forbidden, match=f"{name} is a pre-defined network and cannot be removed"):
            plain.remove(name)
    with pytest.raises(Forbidden, match="operation is not permitted on predefined bridge network"):
        plain.create({"Name": "bridge"})
    with pytest.raises(NotFound, match='plugin "macvlan2" not found'):
        plain.create({"Name": "x", "Driver": "macvlan2"})
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


@pytest.mark.parametrize("body, message", [
    ({"Name": ""}, "network name must not be empty"),
    ({"Name": "x", "Labels": ["a=b"]}, "Labels must be an object"),
    ({"Name": "x", "IPAM": {"Config": {"Subnet": "10.0.0.0/24"}}}, "Config must be a list"),
    ({"Name": "x", "IPAM": {"Config": [{"Subnet": "10.0.0.0/33"}]}}, "invalid subnet 10.0.0.0/33"),
    ({"Name": "x", "EnableIPv6": True, "IPAM": {"Config": [{"Subnet": "fd00::/127"}]}}, "too small: at most /126"),
    ({"Name": "x", "EnableIPv6": True, "IPAM": {"Config": [{"Subnet": "fd00::/64", "Gateway": "10.0.0.1"}]}},
     "no matching subnet for gateway 10.0.0.1"),
    ({"Name": "x", "Options": {"com.docker.network.bridge.enable_icc": "maybe"}},
     'driver-opt "com.docker.network.bridge.enable_icc" is not a valid bool'),
    ({"Name": "x", "Options": {"com.docker.network.driver.mtu": "huge"}}, "invalid MTU huge"),
])
def test_bad_create_requests_get_a_clear_error(plain: NetworkManager, body: dict, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        plain.create(body)
    assert {net["Name"] for net in plain.list()} == {"bridge", "host", "none"}


def test_bad_filters_get_a_clear_error(plain: NetworkManager) -> None:
    with pytest.raises(InvalidParameter, match="not a regular expression"):
        plain.list({"name": ["(unclosed"]})
    with pytest.raises(InvalidParameter, match="invalid filter 'type=other'"):
        plain.list({"type": ["other"]})
    with pytest.raises(InvalidParameter, match='failed to parse value as time or duration: "yesterday"'):
        plain.prune({"until": ["yesterday"]})


@pytest.mark.parametrize("body, error, message", [  # moby's daemon/network.go and libnetwork's controller
    ({"Name": "x", "Driver": "overlay"}, Forbidden, 'This node is not a swarm manager. Use "docker swarm init" or '
     '"docker swarm join" to connect this node to swarm and try again.'),
    ({"Name": "x", "Ingress": True}, Forbidden, "Ingress network can only be global scope network"),
    ({"Name": "x", "Scope": "swarm"}, Forbidden, "cannot create a swarm scoped network when swarm is not active"),
])
def test_swarm_networks_are_refused_as_dockerd_does(plain: NetworkManager, body: dict, error: type,
                                                    message: str) -> None:
    with pytest.raises(error) as refused:
        plain.create(body)
    assert str(refused.value) == message
    assert {net["Name"] for net in plain.list()} == {"bridge", "host", "none"}


def test_network_options_are_kept_and_shown(plain: NetworkManager) -> None:
    plain.create({"Name": "opts", "Attachable": True, "Internal": True, "Scope": "local",
                  "Options": {"com.docker.network.bridge.name": "br-opts", "com.docker.network.driver.mtu": "1400"}})
    shown = plain.inspect("opts")
    assert (shown["Attachable"], shown["Internal"], shown["Scope"], shown["EnableIPv6"]) == (True, True, "local", False)
    assert shown["Options"] == {"com.docker.network.bridge.name": "br-opts", "com.docker.network.driver.mtu": "1400"}
    assert plain.list({"scope": ["local"], "name": ["opts"]})[0]["Id"] == shown["Id"]
    with pytest.raises(Conflict, match="bridge name br-opts is already used"):
        plain.create({"Name": "again", "Options": {"com.docker.network.bridge.name": "br-opts"}})
    with pytest.raises(InvalidParameter, match="invalid bridge name"):
        plain.create({"Name": "long", "Options": {"com.docker.network.bridge.name": "x" * 16}})


def test_ipv6_networks_are_dual_stack(plain: NetworkManager) -> None:
    given = plain.inspect(plain.create({"Name": "v6", "EnableIPv6": True, "IPAM": {"Config": [
        {"Subnet": "fd00:1:2::/64"}, {"Subnet": "10.91.0.0/24"}]}})["Id"])
    assert given["EnableIPv6"] is True
    assert given["IPAM"]["Config"] == [{"Subnet": "10.91.0.0/24", "Gateway": "10.91.0.1"},
                                       {"Subnet": "fd00:1:2::/64", "Gateway": "fd00:1:2::1"}]
    picked = plain.inspect(plain.create({"Name": "auto6", "EnableIPv6": True})["Id"])["IPAM"]["Config"]
    assert picked[1] == {"Subnet": "fd6d:6163:6869::/64", "Gateway": "fd6d:6163:6869::1"}
    with pytest.raises(Forbidden, match="Pool overlaps"):
        plain.create({"Name": "clash", "EnableIPv6": True, "IPAM": {"Config": [{"Subnet": "fd00:1:2::/80"}]}})
    ignored = plain.inspect(plain.create({"Name": "v4only", "IPAM": {"Config": [{"Subnet": "fd00:9::/64"}]}})["Id"])
    assert ignored["EnableIPv6"] is False and len(ignored["IPAM"]["Config"]) == 1
