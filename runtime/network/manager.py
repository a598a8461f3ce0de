"""Networks, endpoints and published ports, with Docker's shapes and Docker's wording.

State (networks, endpoints = address leases, published ports) lives in one JSON file under ``root``, replaced
atomically after every change, so a daemon killed at any point restarts with a consistent view; ``restore`` then
reconciles it with what is still running. A bridge device (and its iptables rules) exists only while its network has
endpoints: an idle host carries no trace of us, and tests that stop their containers leave nothing behind.
"""
from __future__ import annotations

import builtins
import copy
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from runtime.errors import Conflict, Forbidden, HostError, InvalidParameter, NotFound, NotSupported
from runtime.network import hosts, ipam
from runtime.network.links import Firewall, bridge_rules, enable_ip_forward, in_netns_of, ip_query, log, port_rules
from runtime.network.netlink import RtNetlink, configure_inside, link_exists, loopback_up, move_default_route
from runtime.network.proxy import PortProxy, bind_socket

DEFAULT_SUBNET = "172.29.0.0/16"
DEFAULT_POOL = "172.30.0.0/15"
POOL_PREFIX = 24
PREDEFINED = ("bridge", "host", "none")
OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_MTU = "com.docker.network.driver.mtu"
HOST_NETWORK_CONFLICT = "container cannot be disconnected from host network or connected to host network"
NETWORK_FILTERS = ("dangling", "driver", "id", "label", "name", "scope", "type")

Dict_ = dict[str, Any]


class NetworkManager:
    """Docker's bridge driver, IPAM and port publishing for one daemon. Every public method is thread-safe."""

    def __init__(self, root: str, exec_root: str, *, default_subnet: str | None = None,
                 bridge_name: str = "mrt0", pool: str = DEFAULT_POOL, pool_prefix: int = POOL_PREFIX) -> None:
        self.root = root
        self.exec_root = exec_root
        self.bridge_name = bridge_name
        self.pool = ipam.parse_subnet(pool)
        self.pool_prefix = pool_prefix
        self._path = os.path.join(root, "state.json")
        self._lock = threading.RLock()
        self._firewall = Firewall()
        self._proxies: dict[str, list[PortProxy]] = {}
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._state: Dict_ = self._load()
        self._ensure_predefined(ipam.parse_subnet(default_subnet or DEFAULT_SUBNET))

    # --- persistence -------------------------------------------------------------------------------------------

    def _load(self) -> Dict_:
        try:
            with open(self._path) as saved:
                state = json.load(saved)
        except FileNotFoundError:
            state = {}
        except (OSError, ValueError) as exc:
            raise HostError(f"cannot read network state {self._path}: {exc}") from None
        for key in ("networks", "endpoints", "ports"):
            state.setdefault(key, {})
        return state

    def _save(self) -> None:
        temporary = self._path + ".tmp"
        with open(temporary, "w") as out:
            json.dump(self._state, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self._path)

    def _ensure_predefined(self, default_subnet: ipam.Network) -> None:
        """The three networks Docker always shows; the default bridge follows the daemon's flags while idle."""
        by_name = {net["Name"]: net for net in self._networks()}
        for name, driver in (("bridge", "bridge"), ("host", "host"), ("none", "null")):
            if name not in by_name:
                net = self._new_network(name, driver, {}, {}, internal=False)
                self._state["networks"][net["Id"]] = net
                by_name[name] = net
        bridge = by_name["bridge"]
        if not self._members(bridge["Id"]):
            gateway = str(next(default_subnet.hosts()))
            bridge["IPAM"]["Config"] = [{"Subnet": str(default_subnet), "Gateway": gateway}]
            bridge["Options"] = {
                "com.docker.network.bridge.default_bridge": "true",
                "com.docker.network.bridge.enable_icc": "true",
                "com.docker.network.bridge.enable_ip_masquerade": "true",
                "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
                OPT_BRIDGE_NAME: self.bridge_name,
                OPT_MTU: "1500",
            }
            bridge["_bridge"] = self.bridge_name
        self._save()

    # --- networks ----------------------------------------------------------------------------------------------

    def _networks(self) -> builtins.list[Dict_]:
        """In creation order, as Docker lists them."""
        return sorted(self._state["networks"].values(), key=lambda net: net["Created"])

    @staticmethod
    def _new_network(name: str, driver: str, labels: Dict_, options: Dict_, internal: bool) -> Dict_:
        return {
            "Name": name, "Id": secrets.token_hex(32), "Created": _now(), "Scope": "local", "Driver": driver,
            "EnableIPv4": True, "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": None, "Config": []},
            "Internal": internal, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
            "ConfigOnly": False, "Options": options, "Labels": labels,
        }

    def _resolve(self, ref: str) -> Dict_:
        """By full id, then exact name, then unique id prefix, as Docker looks networks up."""
        networks = self._state["networks"]
        if ref in networks:
            return networks[ref]
        for net in networks.values():
            if net["Name"] == ref:
                return net
        matches = [net for net_id, net in networks.items() if ref and net_id.startswith(ref)]
        if len(matches) > 1:
            raise InvalidParameter(f"network {ref} is ambiguous ({len(matches)} matches found based on ID prefix)")
        if not matches:
            raise NotFound(f"network {ref} not found")
        return matches[0]

    def _members(self, net_id: str) -> dict[str, Dict_]:
        """Container id -> endpoint, for every container attached to ``net_id``."""
        return {cid: eps[net_id] for cid, eps in self._state["endpoints"].items() if net_id in eps}

    def create(self, body: Dict_) -> Dict_:
        """``POST /networks/create``: a bridge network; the device itself appears with the first endpoint."""
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            raise InvalidParameter("network name must not be empty")
        driver = body.get("Driver") or "bridge"
        if body.get("EnableIPv6"):
            raise NotSupported("IPv6 networks are not supported by this runtime")
        with self._lock:
            if any(net["Name"] == name for net in self._networks()):
                raise Conflict(f"network with name {name} already exists")
            if driver in ("host", "null"):
                raise Forbidden(f'only one instance of "{driver}" network is allowed')
            if driver != "bridge":
                raise NotFound(f'plugin "{driver}" not found')
            options = {str(k): str(v) for k, v in _expect(body, "Options", dict).items()}
            labels = {str(k): str(v) for k, v in _expect(body, "Labels", dict).items()}
            net = self._new_network(name, "bridge", labels, options, bool(body.get("Internal")))
            net["Attachable"] = bool(body.get("Attachable"))
            spec = _expect(body, "IPAM", dict)
            net["IPAM"]["Config"] = [self._ipam_config(spec)]
            net["IPAM"]["Options"] = spec.get("Options")
            net["_bridge"] = options.get(OPT_BRIDGE_NAME) or "mrt-" + net["Id"][:11]
            _mtu(net)
            if any(other.get("_bridge") == net["_bridge"] for other in self._networks()):
                raise Conflict(f"bridge name {net['_bridge']} is already used by another network")
            self._state["networks"][net["Id"]] = net
            self._save()
        return {"Id": net["Id"], "Warning": ""}

    def _ipam_config(self, spec: Dict_) -> Dict_:
        configs = [c for c in _expect(spec, "Config", list) if c]
        if not all(isinstance(c, dict) for c in configs):
            raise InvalidParameter("IPAM.Config must be a list of objects")
        if len(configs) > 1:
            raise InvalidParameter("only one IPv4 subnet per network is supported")
        config = configs[0] if configs else {}
        taken = [ipam.parse_subnet(c["Subnet"]) for net in self._networks() for c in net["IPAM"]["Config"]]
        if config.get("Subnet"):
            subnet = ipam.parse_subnet(config["Subnet"])
            ipam.check_free(subnet, taken)
        else:
            subnet = ipam.pick_subnet(self.pool, self.pool_prefix, taken + ipam.host_routes())
        result: dict[str, Any] = {"Subnet": str(subnet)}
        if config.get("IPRange"):
            ip_range = ipam.parse_subnet(config["IPRange"])
            if not ip_range.subnet_of(subnet):
                raise InvalidParameter(f"IP range {ip_range} is not within subnet {subnet}")
            result["IPRange"] = str(ip_range)
        gateway = config.get("Gateway")
        result["Gateway"] = ipam.parse_address(gateway, subnet, "gateway") if gateway else str(next(subnet.hosts()))
        aux = config.get("AuxiliaryAddresses") or {}
        if aux:
            result["AuxiliaryAddresses"] = {k: ipam.parse_address(v, subnet, "auxiliary") for k, v in aux.items()}
        return result

    def inspect(self, ref: str) -> Dict_:
        """``GET /networks/{id}``, with the ``Containers`` map of live endpoints."""
        with self._lock:
            net = self._resolve(ref)
            return self._render(net, containers=True)

    def _render(self, net: Dict_, containers: bool) -> Dict_:
        shown = {key: value for key, value in net.items() if not key.startswith("_")}
        shown["Containers"] = {}
        if containers:
            for cid, ep in self._members(net["Id"]).items():
                shown["Containers"][cid] = {
                    "Name": ep["Name"], "EndpointID": ep["EndpointID"], "MacAddress": ep["MacAddress"],
                    "IPv4Address": f'{ep["IPAddress"]}/{ep["IPPrefixLen"]}' if ep["IPAddress"] else "",
                    "IPv6Address": "",
                }
        return copy.deepcopy(shown)

    def list(self, filters: Dict_ | None = None) -> builtins.list[Dict_]:
        """``GET /networks``: filters dangling, driver, id, label, name, scope, type (Docker's semantics)."""
        wanted = _filters(filters, NETWORK_FILTERS)
        with self._lock:
            return [self._render(net, containers=False) for net in self._networks() if self._matches(net, wanted)]

    def _matches(self, net: Dict_, wanted: dict[str, builtins.list[str]]) -> bool:
        checks = {
            "driver": lambda v: net["Driver"] == v,
            "id": lambda v: v in net["Id"],
            "name": lambda v: _pattern(v).search(net["Name"]) is not None,
            "scope": lambda v: v == "local",
            "type": lambda v: (net["Name"] in PREDEFINED) == (_choice(v, ("builtin", "custom"), "type") == "builtin"),
            "label": lambda v: _label_match(net["Labels"], v),
            "dangling": lambda v: (net["Name"] not in PREDEFINED and not self._members(net["Id"])) == _bool(v),
        }
        return all(any(checks[key](value) for value in values) for key, values in wanted.items())

    def remove(self, ref: str) -> None:
        """``DELETE /networks/{id}``."""
        with self._lock:
            net = self._resolve(ref)
            if net["Name"] in PREDEFINED:
                raise Forbidden(f"{net['Name']} is a pre-defined network and cannot be removed")
            if self._members(net["Id"]):
                raise Forbidden("error while removing network: network {} id {} has active endpoints".format(net["Name"], net["Id"]))
            self._drop_bridge(net)
            del self._state["networks"][net["Id"]]
            self._save()

    def prune(self, filters: Dict_ | None = None) -> Dict_:
        """``POST /networks/prune``: user networks without endpoints; filters until, label, label!."""
        wanted = _filters(filters, ("until", "label", "label!"))
        cutoff = min((_timestamp(v) for v in wanted.get("until", [])), default=None)
        deleted = []
        with self._lock:
            for net in self._networks():
                if net["Name"] in PREDEFINED or self._members(net["Id"]):
                    continue
                if cutoff is not None and _parse_created(net["Created"]) >= cutoff:
                    continue
                if not all(_label_match(net["Labels"], v) for v in wanted.get("label", [])):
                    continue
                if any(_label_match(net["Labels"], v) for v in wanted.get("label!", [])):
                    continue
                self._drop_bridge(net)
                del self._state["networks"][net["Id"]]
                deleted.append(net["Name"])
            self._save()
        return {"NetworksDeleted": deleted}

    # --- endpoints ---------------------------------------------------------------------------------------------

    def connect(self, net_ref: str, container_id: str, pid: int, *, name: str, aliases: Iterable[str] | None = None,
                ipv4: str | None = None, hosts_path: str | None = None,
                hostname: str | None = None) -> Dict_:
        """Attaches the running container ``pid`` to a network and returns its EndpointSettings.

        On a bridge network: a veth pair with the container end as ``eth0`` (``eth1``... for further networks),
        its address, and a default route through the first gateway; then the ``/etc/hosts`` of the container and
        of its peers on user-defined networks are rewritten. ``host`` and ``none`` only record the membership
        (``none`` brings up ``lo``).
        """
        name = name.lstrip("/")
        with self._lock:
            net = self._resolve(net_ref)
            current = self._state["endpoints"].get(container_id, {})
            if net["Id"] in current:
                raise Forbidden(f"endpoint with name {name} already exists in network {net['Name']}")
            drivers = {self._state["networks"][nid]["Driver"] for nid in current}
            if "host" in drivers or (current and net["Driver"] == "host"):
                raise InvalidParameter(HOST_NETWORK_CONFLICT)
            if "null" in drivers or (current and net["Driver"] == "null"):
                raise InvalidParameter("container cannot be connected to multiple networks with one of the networks "
                                       "in private (none) mode")
            ep = {"EndpointID": secrets.token_hex(32), "NetworkID": net["Id"], "Name": name, "Pid": pid,
                  "Aliases": list(aliases or []), "HostsPath": hosts_path, "Hostname": hostname or container_id[:12],
                  "IPAddress": "", "IPPrefixLen": 0, "Gateway": "", "MacAddress": "", "HostVeth": "",
                  "Interface": "", "DefaultRoute": False}
            if net["Driver"] == "null":
                in_netns_of(pid, loopback_up)
            elif net["Driver"] == "bridge":
                self._attach(net, ep, current, ipv4)
            self._state["endpoints"].setdefault(container_id, {})[net["Id"]] = ep
            self._save()
            self._refresh_hosts(self._neighbours(container_id))
            return self._settings(net, container_id, ep)

    def _attach(self, net: Dict_, ep: Dict_, current: dict[str, Dict_], ipv4: str | None) -> None:
        config = net["IPAM"]["Config"][0]
        subnet = ipam.parse_subnet(config["Subnet"])
        used = {e["IPAddress"] for e in self._members(net["Id"]).values()} | {config["Gateway"]}
        used.update((config.get("AuxiliaryAddresses") or {}).values())
        if net["Name"] == "bridge" and ep["Aliases"]:
            raise InvalidParameter("network-scoped alias is supported only for containers in user defined networks")
        if ipv4:
            if net["Name"] == "bridge":
                raise InvalidParameter("user specified IP address is supported on user defined networks only")
            address = ipam.parse_address(ipv4, subnet, "IPv4")
            if address in used:
                raise Conflict("Address already in use")
        else:
            pool = ipam.parse_subnet(config["IPRange"]) if config.get("IPRange") else subnet
            address = ipam.allocate(pool, used, net.get("_last"))
            net["_last"] = address
        taken_ifaces = {e["Interface"] for e in current.values()}
        interface = next(f"eth{n}" for n in range(len(taken_ifaces) + 1) if f"eth{n}" not in taken_ifaces)
        route = not net["Internal"] and not any(e["DefaultRoute"] for e in current.values())
        ep.update(IPAddress=address, IPPrefixLen=subnet.prefixlen, Gateway=config["Gateway"],
                  MacAddress=ipam.mac_for(address), HostVeth="veth" + ep["EndpointID"][:7], Interface=interface,
                  DefaultRoute=route)
        self._ensure_bridge(net)
        gateway = config["Gateway"] if route else None
        try:
            with RtNetlink() as nl:
                nl.add_veth(ep["HostVeth"], interface, ep["MacAddress"], ep["Pid"], _mtu(net),
                            socket.if_nametoindex(net["_bridge"]))
            in_netns_of(ep["Pid"], lambda: configure_inside(interface, address, subnet.prefixlen, gateway))
        except Exception:
            _delete_link(ep["HostVeth"])
            self._drop_bridge_if_idle(net)
            raise

    def _ensure_bridge(self, net: Dict_, reconcile: bool = False) -> None:
        """Creates the bridge with its gateway address and rules if missing; ``reconcile`` re-checks the rules."""
        bridge = net["_bridge"]
        config = net["IPAM"]["Config"][0]
        created = not link_exists(bridge)
        if created:
            with RtNetlink() as nl:
                nl.add_bridge(bridge, _mtu(net))
                nl.add_address(socket.if_nametoindex(bridge), config["Gateway"],
                               ipam.parse_subnet(config["Subnet"]).prefixlen)
            if not net["Internal"]:
                enable_ip_forward()
        if created or reconcile:
            self._firewall.add(bridge, bridge_rules(bridge, config["Subnet"], net["Internal"]))

    def _drop_bridge(self, net: Dict_, thorough: bool = False) -> None:
        """Removes an idle network's bridge and its rules; a bridge someone else still has ports on is left alone.
        ``thorough`` also looks for rules when the bridge is already gone (after a crash)."""
        bridge = net.get("_bridge")
        if not bridge:
            return
        exists = link_exists(bridge)
        if exists and ip_query("-o", "link", "show", "master", bridge).strip():
            return
        if exists:
            _delete_link(bridge)
        if exists or thorough:
            self._firewall.remove(bridge)

    def _drop_bridge_if_idle(self, net: Dict_) -> None:
        if net["Driver"] == "bridge" and not self._members(net["Id"]):
            self._drop_bridge(net)

    def _settings(self, net: Dict_, container_id: str, ep: Dict_) -> Dict_:
        """Docker's EndpointSettings for ``ep``."""
        user_defined = net["Name"] not in PREDEFINED
        return {
            "IPAMConfig": None, "Links": None, "Aliases": ep["Aliases"] or None, "MacAddress": ep["MacAddress"],
            "DriverOpts": None, "GwPriority": 0, "NetworkID": net["Id"], "EndpointID": ep["EndpointID"],
            "Gateway": ep["Gateway"], "IPAddress": ep["IPAddress"], "IPPrefixLen": ep["IPPrefixLen"],
            "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "DNSNames": list(dict.fromkeys([ep["Name"], container_id[:12], *ep["Aliases"]])) if user_defined else None,
        }

    def endpoints(self, container_id: str) -> dict[str, Dict_]:
        """Network name -> EndpointSettings of a container, for ``NetworkSettings.Networks`` in inspect."""
        with self._lock:
            return {self._state["networks"][nid]["Name"]: self._settings(self._state["networks"][nid], container_id, ep)
                    for nid, ep in self._state["endpoints"].get(container_id, {}).items()}

    def disconnect(self, net_ref: str, container_id: str) -> None:
        """Detaches a container from one network; its default route moves to another network when it can."""
        with self._lock:
            net = self._resolve(net_ref)
            current = self._state["endpoints"].get(container_id, {})
            if net["Id"] not in current:
                raise Forbidden(f"container {container_id} is not connected to network {net['Name']}")
            if net["Driver"] == "host":
                raise InvalidParameter(HOST_NETWORK_CONFLICT)
            neighbours = self._neighbours(container_id)
            ep = current.pop(net["Id"])
            if ep["HostVeth"]:
                _delete_link(ep["HostVeth"])
            if not current:
                del self._state["endpoints"][container_id]
            elif ep["DefaultRoute"]:
                self._move_default_route(current)
            self._drop_bridge_if_idle(net)
            self._save()
            self._refresh_hosts(neighbours)

    def _move_default_route(self, current: dict[str, Dict_]) -> None:
        for nid, other in current.items():
            if other["Gateway"] and not self._state["networks"][nid]["Internal"]:
                try:
                    in_netns_of(other["Pid"], lambda: move_default_route(other["Interface"], other["Gateway"]))
                    other["DefaultRoute"] = True
                except HostError as exc:
                    log.warning("cannot move the default route: %s", exc)
                return

    def release(self, container_id: str) -> None:
        """Drops every endpoint, lease and published port of a container (on stop, die or remove); a container
        with none is a no-op, so calling it on both stop and remove is fine."""
        with self._lock:
            had_ports = self._unpublish(container_id)
            if not had_ports and container_id not in self._state["endpoints"]:
                return
            neighbours = self._neighbours(container_id)
            endpoints = self._state["endpoints"].pop(container_id, {})
            for nid, ep in endpoints.items():
                if ep["HostVeth"]:
                    _delete_link(ep["HostVeth"])
                self._drop_bridge_if_idle(self._state["networks"][nid])
            self._save()
            self._refresh_hosts(neighbours)

    # --- /etc/hosts --------------------------------------------------------------------------------------------

    def _neighbours(self, container_id: str) -> builtins.list[str]:
        """The container and every container sharing a user-defined network with it: whose hosts files change."""
        found = [container_id]
        for nid in self._state["endpoints"].get(container_id, {}):
            if self._state["networks"][nid]["Name"] not in PREDEFINED:
                found += [cid for cid in self._members(nid) if cid not in found]
        return found

    def _refresh_hosts(self, container_ids: Iterable[str]) -> None:
        for cid in container_ids:
            endpoints = self._state["endpoints"].get(cid, {})
            path = next((ep["HostsPath"] for ep in endpoints.values() if ep["HostsPath"]), None)
            if not path:
                continue
            entries: list[tuple[str, list[str]]] = []
            for nid, ep in endpoints.items():
                user_defined = self._state["networks"][nid]["Name"] not in PREDEFINED
                if ep["IPAddress"]:
                    own = [ep["Hostname"]] + ([ep["Name"], *ep["Aliases"]] if user_defined else [])
                    entries.append((ep["IPAddress"], own))
            for nid in endpoints:
                if self._state["networks"][nid]["Name"] in PREDEFINED:
                    continue
                for peer, ep in self._members(nid).items():
                    if peer != cid and ep["IPAddress"]:
                        entries.append((ep["IPAddress"], [ep["Name"], *ep["Aliases"], peer[:12]]))
            hosts.write_block(path, hosts.render_block(entries))

    # --- published ports ---------------------------------------------------------------------------------------

    def publish(self, container_id: str, ip: str, port_bindings: Dict_ | None,
                exposed: Iterable[str] | None = None, publish_all: bool = False) -> Dict_:
        """Opens the host ports of a container and returns ``NetworkSettings.Ports``.

        ``port_bindings`` is HostConfig.PortBindings (``{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}``); an
        empty or "0" HostPort takes a free port, "8000-8010" the first free one of the range. ``publish_all`` (-P)
        gives every exposed port without a binding a free port. Exposed ports without a binding map to None.
        """
        wanted: dict[str, list[Dict_]] = {}
        for key, bindings in (port_bindings or {}).items():
            wanted.setdefault(_port_key(key), []).extend(bindings or [])
        ports: dict[str, list[Dict_] | None] = {_port_key(key): None for key in exposed or []}
        if publish_all:
            for key in ports:
                wanted.setdefault(key, [{}])
        with self._lock:
            self._unpublish(container_id)
            opened: list[PortProxy] = []
            records: list[Dict_] = []
            try:
                for key, bindings in wanted.items():
                    number, proto = key.split("/")
                    bound: list[Dict_] = []
                    ports[key] = bound if bindings else None
                    for binding in bindings:
                        proxy = self._open(proto, binding, ip, int(number))
                        opened.append(proxy)
                        records.append({"proto": proto, "host_ip": proxy.host_ip, "host_port": proxy.host_port,
                                        "container_ip": ip, "container_port": int(number)})
                        bound.append({"HostIp": proxy.host_ip, "HostPort": str(proxy.host_port)})
            except BaseException:
                for proxy in opened:
                    proxy.close()
                raise
            self._proxies[container_id] = opened
            self._state["ports"][container_id] = records
            self._firewall.add(_port_tag(container_id), self._port_rules(container_id), check=False)
            self._save()
        return ports

    @staticmethod
    def _open(proto: str, binding: Dict_, container_ip: str, container_port: int) -> PortProxy:
        host_ip = (binding or {}).get("HostIp") or "0.0.0.0"
        candidates = _host_ports(str((binding or {}).get("HostPort") or "0"))
        error: OSError | None = None
        for port in candidates:
            try:
                return PortProxy(bind_socket(proto, host_ip, port), proto, container_ip, container_port)
            except OSError as exc:
                error = exc
        ports = str(candidates[0]) if len(candidates) == 1 else f"{candidates[0]}-{candidates[-1]}"
        shown = f"{host_ip}:{ports}"
        if error is not None and error.errno == 98:
            raise HostError(f"Bind for {shown} failed: port is already allocated")
        raise HostError("driver failed programming external connectivity: listen {} {}: {}".format(proto, shown, error.strerror if error else "no port"))

    def unpublish(self, container_id: str) -> None:
        """Closes a container's host ports (they are free when this returns) and forgets them."""
        with self._lock:
            if self._unpublish(container_id):
                self._save()

    def _unpublish(self, container_id: str) -> bool:
        """Closes the proxies and removes the DNAT rules of a container; says whether it had published ports."""
        self._stop_proxies(container_id)
        rules = self._port_rules(container_id)
        if not self._state["ports"].pop(container_id, None):
            return False
        self._firewall.remove(_port_tag(container_id), rules)
        return True

    def _stop_proxies(self, container_id: str) -> None:
        for proxy in self._proxies.pop(container_id, []):
            proxy.close()

    def _port_rules(self, container_id: str) -> dict[str, builtins.list[str]]:
        """DNAT rules for the ports of a container on routed networks; the proxies serve everything else."""
        records = self._state["ports"].get(container_id) or []
        rules: dict[str, list[str]] = {}
        for nid, ep in self._state["endpoints"].get(container_id, {}).items():
            net = self._state["networks"][nid]
            mine = [record for record in records if record["container_ip"] == ep["IPAddress"]]
            if mine and net["Driver"] == "bridge" and not net["Internal"]:
                for table, lines in port_rules(_port_tag(container_id), net["_bridge"], mine).items():
                    rules.setdefault(table, []).extend(lines)
        return rules

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def restore(self, running: dict[str, int]) -> None:
        """After a daemon restart: ``running`` maps the ids of containers still alive to their pids.

        Endpoints and ports of the others are dropped (their namespaces are gone), bridges of idle networks are
        removed, and the published ports of the living are opened again on the same host ports.
        """
        with self._lock:
            for cid in set(self._state["endpoints"]) | set(self._state["ports"]):
                if cid not in running:
                    self.release(cid)
            for cid, eps in self._state["endpoints"].items():
                for ep in eps.values():
                    ep["Pid"] = running[cid]
            for net in self._networks():
                if net["Driver"] != "bridge":
                    continue
                if self._members(net["Id"]):
                    self._ensure_bridge(net, reconcile=True)
                else:
                    self._drop_bridge(net, thorough=True)
            for cid, records in self._state["ports"].items():
                self._firewall.add(_port_tag(cid), self._port_rules(cid))
                self._proxies[cid] = []
                for record in records:
                    try:
                        sock = bind_socket(record["proto"], record["host_ip"], record["host_port"])
                    except OSError as exc:
                        log.warning("cannot reopen %s:%s/%s for %s: %s", record["host_ip"], record["host_port"],
                                    record["proto"], cid[:12], exc.strerror)
                        continue
                    self._proxies[cid].append(PortProxy(sock, record["proto"], record["container_ip"],
                                                        record["container_port"]))
            self._save()

    def close(self) -> None:
        """Stops the port proxies; containers keep their addresses and the state stays for ``restore``."""
        with self._lock:
            for cid in list(self._proxies):
                self._stop_proxies(cid)


# --- helpers -------------------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_created(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def _delete_link(name: str) -> None:
    with RtNetlink() as nl:
        nl.delete_link(name)


def _port_tag(container_id: str) -> str:
    return "ports-" + container_id[:12]


def _mtu(net: Dict_) -> int:
    value = net["Options"].get(OPT_MTU, "1500")
    if not value.isdigit() or not 68 <= int(value) <= 65535:
        raise InvalidParameter(f"invalid MTU {value}: it must be a number between 68 and 65535")
    return int(value)


def _port_key(key: str) -> str:
    """``80`` -> ``80/tcp``; rejects what we cannot publish."""
    number, _, proto = str(key).partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp"):
        raise NotSupported(f"publishing {proto} ports is not supported: {key}")
    if not number.isdigit() or not 0 < int(number) < 65536:
        raise InvalidParameter(f"invalid port specification: {key}")
    return f"{int(number)}/{proto}"


def _host_ports(text: str) -> list[int]:
    start, _, end = text.partition("-")
    if not start.isdigit() or (end and not end.isdigit()):
        raise InvalidParameter(f"invalid host port: {text}")
    first, last = int(start), int(end or start)
    if last < first or last > 65535:
        raise InvalidParameter(f"invalid host port range: {text}")
    return list(range(first, last + 1))


def _filters(filters: Dict_ | None, allowed: Iterable[str]) -> dict[str, list[str]]:
    """Docker's filter map in either wire form, ``{"k": ["v"]}`` or the old ``{"k": {"v": true}}``."""
    result = {}
    for key, values in (filters or {}).items():
        if key not in allowed:
            raise InvalidParameter(f"invalid filter '{key}'")
        result[key] = [str(v) for v in (values if isinstance(values, list) else [v for v, on in values.items() if on])]
    return result


def _expect(body: Dict_, key: str, kind: type) -> Any:
    """``body[key]`` when it has the JSON type ``kind``; missing or null gives an empty one."""
    value = body.get(key)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise InvalidParameter(f"{key} must be {'an object' if kind is dict else 'a list'}")
    return value


def _pattern(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error:
        raise InvalidParameter(f"invalid filter 'name={text}': not a regular expression") from None


def _label_match(labels: Dict_, spec: str) -> bool:
    key, has_value, value = spec.partition("=")
    return key in labels and (not has_value or labels[key] == value)


def _bool(text: str) -> bool:
    return _choice(text.lower(), ("true", "false", "1", "0"), "dangling") in ("true", "1")


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidParameter(f"invalid filter '{what}={value}'")
    return value


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+")
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def _timestamp(text: str) -> float:
    """``until`` values: unix seconds, an RFC 3339 time, or a Go duration back from now (``24h``, ``1h30m``)."""
    try:
        return float(text)
    except ValueError:
        pass
    if _DURATION.fullmatch(text):
        return time.time() - sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidParameter(f"invalid filter 'until={text}'") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()

