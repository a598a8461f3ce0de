"""Networks, endpoints and published ports, with Docker's shapes and Docker's wording.

State (networks, endpoints = address leases, published ports) lives in one JSON file under ``root``, replaced
atomically after every change, so a daemon killed at any point restarts with a consistent view; ``restore`` then
reconciles it with what is still running. A bridge device (and its iptables rules) is made with its network's first
endpoint and then kept, as dockerd keeps docker0, until the network is removed or the daemon stops (``close``, or
``restore`` after a crash, drops every idle one): making and deleting a bridge and its rules on each container's
start and exit cost about 100 ms of every ``docker run --rm``. A host whose daemon stopped carries no trace of us.
"""
from __future__ import annotations

import builtins
import copy
import ipaddress
import json
import os
import queue
import re
import secrets
import socket
import threading
from collections.abc import Iterable
from typing import Any

from machines.runtime import timefmt
from machines.runtime.errors import Conflict, Forbidden, HostError, InvalidParameter, NotFound, NotSupported
from machines.runtime.filters import Args
from machines.runtime.linux.paths import private_dir
from machines.runtime.network import dns, hosts, ipam
from machines.runtime.network.links import (
    Firewall,
    bridge_rules,
    enable_ip_forward,
    in_netns_of,
    ip_query,
    log,
    port_rules,
)
from machines.runtime.network.netlink import RtNetlink, configure_inside, link_exists, loopback_up, move_default_route
from machines.runtime.network.proxy import PortProxy, bind_socket

DEFAULT_SUBNET = "172.29.0.0/16"
DEFAULT_POOL = "172.30.0.0/15"
POOL_PREFIX = 24
PREDEFINED = ("bridge", "host", "none")
OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_MTU = "com.docker.network.driver.mtu"
OPT_ENABLE_IPV6 = "com.docker.network.enable_ipv6"
OPT_ICC = "com.docker.network.bridge.enable_icc"
OPT_MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
NOT_SWARM_MANAGER = ('This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect this '
                     'node to swarm and try again.')
HOST_NETWORK_CONFLICT = "container cannot be disconnected from host network or connected to host network"
NETWORK_FILTERS = ("dangling", "driver", "id", "label", "name", "scope", "type")
PRUNE_FILTERS = ("label", "label!", "until")
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")

Dict_ = dict[str, Any]
Link = tuple[str, list[str]]  # a --link target: its container id, and the names it has for the linking container


class NetworkManager:
    """Docker's bridge driver, IPAM and port publishing for one daemon. Every public method is thread-safe."""

    def __init__(self, root: str, exec_root: str, *, default_subnet: str | None = None,
                 bridge_name: str = "mrt0", pool: str = DEFAULT_POOL, pool_prefix: int = POOL_PREFIX,
                 resolv_conf: str = "/etc/resolv.conf", mtu: int = 1500) -> None:
        """``default_subnet`` may name the gateway as dockerd's ``bip`` does (``172.30.0.1/16``); ``mtu``: the
        default bridge's (dockerd's ``mtu``)."""
        self.root = root
        self.resolv_conf = resolv_conf
        self.exec_root = exec_root
        self.bridge_name = bridge_name
        self.mtu = mtu
        self.pool = ipam.parse_subnet(pool)
        self.pool_prefix = pool_prefix
        self._path = os.path.join(root, "state.json")
        self._lock = threading.RLock()
        self._firewall = Firewall()
        self._unlinker = _Unlinker()
        self._proxies: dict[str, list[PortProxy]] = {}
        self._dns = dns.Resolver(self.lookup, self.reverse, self.upstreams)
        private_dir(root, 0o700)
        self._state: Dict_ = self._load()
        self._ensure_predefined(ipaddress.ip_interface(default_subnet or DEFAULT_SUBNET))

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

    def _save(self, durable: bool = True) -> None:
        """Replaces the state file atomically. ``durable`` also waits for the disk: wanted for networks, which
        must survive a power cut; endpoints and ports are not (as a container's own state is not): they only
        matter while their containers run, a power cut ends those too and ``restore`` then drops their endpoints,
        and each fsync costs 5 to 30 ms of a container's start or exit on a busy disk."""
        temporary = self._path + ".tmp"
        with open(temporary, "w") as out:
            json.dump(self._state, out, indent=1, sort_keys=True)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, self._path)

    def _ensure_predefined(self, bip: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        """The three networks Docker always shows; the default bridge follows the daemon's flags while idle."""
        by_name = {net["Name"]: net for net in self._networks()}
        for name, driver in (("bridge", "bridge"), ("host", "host"), ("none", "null")):
            if name not in by_name:
                net = self._new_network(name, driver, {}, {}, internal=False)
                self._state["networks"][net["Id"]] = net
                by_name[name] = net
        bridge = by_name["bridge"]
        default_subnet = ipam.parse_subnet(str(bip.network))  # checked even while the bridge keeps its subnet
        if not self._members(bridge["Id"]):
            gateway = str(bip.ip if bip.ip != bip.network.network_address else next(default_subnet.hosts()))
            bridge["IPAM"]["Config"] = [{"Subnet": str(default_subnet), "Gateway": gateway}]
            bridge["Options"] = {
                "com.docker.network.bridge.default_bridge": "true",
                "com.docker.network.bridge.enable_icc": "true",
                "com.docker.network.bridge.enable_ip_masquerade": "true",
                "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
                OPT_BRIDGE_NAME: self.bridge_name,
                OPT_MTU: str(self.mtu),
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
            "Name": name, "Id": secrets.token_hex(32), "Created": timefmt.rfc3339_nano(), "Scope": "local", "Driver": driver,
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
        """``POST /networks/create``: a bridge network; the device itself appears with the first endpoint.

        Swarm drivers and scopes are refused with dockerd's words for a node outside a swarm; ``EnableIPv6`` makes
        the network dual-stack (a v6 subnet given, or a /64 of our ULA pool)."""
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            raise InvalidParameter("network name must not be empty")
        if not NAME_RE.fullmatch(name):  # names reach hosts files and logs: no spaces, slashes or newlines
            raise InvalidParameter(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        driver = body.get("Driver") or "bridge"
        if name in PREDEFINED:
            raise Forbidden(f"operation is not permitted on predefined {name} network ")
        if driver == "overlay":
            raise Forbidden(NOT_SWARM_MANAGER)
        scope = body.get("Scope") or "local"
        if scope == "swarm":
            raise Forbidden("cannot create a swarm scoped network when swarm is not active")
        if scope not in ("local", "global"):
            raise InvalidParameter(f"invalid scope {scope}")
        with self._lock:
            if any(net["Name"] == name for net in self._networks()):
                raise Conflict(f"network with name {name} already exists")
            if driver in ("host", "null"):
                raise Forbidden(f'only one instance of "{driver}" network is allowed')
            if driver != "bridge":
                raise NotFound(f'plugin "{driver}" not found')
            if body.get("Ingress"):
                raise Forbidden("Ingress network can only be global scope network")
            if scope == "global":
                raise Forbidden(f"cannot downgrade network scope for {driver} networks")
            options = {str(k): str(v) for k, v in _expect(body, "Options", dict).items()}
            labels = {str(k): str(v) for k, v in _expect(body, "Labels", dict).items()}
            net = self._new_network(name, "bridge", labels, options, bool(body.get("Internal")))
            net["Attachable"] = bool(body.get("Attachable"))
            net["EnableIPv6"] = _flag(body.get("EnableIPv6"), options.get(OPT_ENABLE_IPV6), OPT_ENABLE_IPV6)
            spec = _expect(body, "IPAM", dict)
            net["IPAM"]["Config"], net["_user_subnets"] = self._ipam_configs(spec, net["EnableIPv6"])
            net["IPAM"]["Options"] = spec.get("Options")
            net["_bridge"] = options.get(OPT_BRIDGE_NAME) or "mrt-" + net["Id"][:11]
            _mtu(net)
            for option in (OPT_ICC, OPT_MASQUERADE):
                _flag(None, options.get(option), option)
            if len(net["_bridge"]) > 15 or not re.fullmatch(r"[A-Za-z0-9_.-]+", net["_bridge"]):
                raise InvalidParameter(f"invalid bridge name {net['_bridge']}")
            if any(other.get("_bridge") == net["_bridge"] for other in self._networks()):
                raise Conflict(f"bridge name {net['_bridge']} is already used by another network")
            self._state["networks"][net["Id"]] = net
            self._save()
        return {"Id": net["Id"], "Warning": ""}

    def _ipam_configs(self, spec: Dict_, enable_ipv6: bool) -> tuple[builtins.list[Dict_], builtins.list[int]]:
        """IPAM.Config as stored (the IPv4 entry first) and the families whose subnet the user chose. Like
        dockerd, an IPv6 subnet on a network without IPv6 is left out."""
        configs = [c for c in _expect(spec, "Config", list) if c]
        if not all(isinstance(c, dict) for c in configs):
            raise InvalidParameter("IPAM.Config must be a list of objects")
        by_family: dict[int, list[Dict_]] = {4: [], 6: []}
        for config in configs:
            by_family[6 if ipam.family(str(config.get("Subnet") or "")) == 6 else 4].append(config)
        for version, found in by_family.items():
            if len(found) > 1:
                raise InvalidParameter(f"only one IPv{version} subnet per network is supported")
        result = [self._ipam_config(by_family[4][0] if by_family[4] else {}, 4)]
        if enable_ipv6:
            result.append(self._ipam_config(by_family[6][0] if by_family[6] else {}, 6))
        chosen = [version for version in (4, 6) if by_family[version] and by_family[version][0].get("Subnet")]
        return result, chosen

    def _ipam_config(self, config: Dict_, version: int) -> Dict_:
        taken = [ipam.parse_subnet(c["Subnet"]) for net in self._networks() for c in net["IPAM"]["Config"]]
        if config.get("Subnet"):
            subnet = ipam.parse_subnet(config["Subnet"])
            if subnet.version != version:
                raise InvalidParameter(f"invalid subnet {config['Subnet']}: not an IPv{version} subnet")
            ipam.check_free(subnet, taken)
        elif version == 4:
            subnet = ipam.pick_subnet(self.pool, self.pool_prefix, taken + ipam.host_routes())
        else:
            subnet = ipam.pick_subnet(ipam.parse_subnet(ipam.DEFAULT_V6_POOL), 64, taken)
        result: dict[str, Any] = {"Subnet": str(subnet)}
        if config.get("IPRange"):
            ip_range = ipam.parse_subnet(config["IPRange"])
            if ip_range.version != subnet.version or not ip_range.subnet_of(subnet):  # type: ignore[arg-type]
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
                    "IPv4Address": f"{ep['IPAddress']}/{ep['IPPrefixLen']}" if ep["IPAddress"] else "",
                    "IPv6Address": f"{ep['GlobalIPv6Address']}/{ep['GlobalIPv6PrefixLen']}"
                    if ep.get("GlobalIPv6Address") else "",
                }
        return copy.deepcopy(shown)

    def list(self, filters: Args | None = None) -> builtins.list[Dict_]:
        """``GET /networks``: filters dangling, driver, id, label, name, scope, type (Docker's semantics)."""
        args = Args.of(filters).validate(NETWORK_FILTERS)
        with self._lock:
            return [self._render(net, containers=False) for net in self._networks() if self._matches(net, args)]

    def _matches(self, net: Dict_, args: Args) -> bool:
        checks = {
            "driver": lambda v: net["Driver"] == v,
            "id": lambda v: v in net["Id"],
            "name": lambda v: _pattern(v).search(net["Name"]) is not None,
            "scope": lambda v: v == "local",
            "type": lambda v: (net["Name"] in PREDEFINED) == (_choice(v, ("builtin", "custom"), "type") == "builtin"),
        }
        if not all(any(test(value) for value in args.get(key)) for key, test in checks.items() if args.get(key)):
            return False
        if args.contains("dangling"):
            dangling = net["Name"] not in PREDEFINED and not self._members(net["Id"])
            if dangling != args.get_bool("dangling", False):
                return False
        return args.match_kv_list("label", net["Labels"])

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

    def prune(self, filters: Args | None = None) -> Dict_:
        """``POST /networks/prune``: user networks without endpoints; filters until, label, label! as moby's."""
        args = Args.of(filters).validate(PRUNE_FILTERS)
        cutoff = args.until()
        deleted = []
        with self._lock:
            for net in self._networks():
                if net["Name"] in PREDEFINED or self._members(net["Id"]):
                    continue
                if cutoff is not None and timefmt.parse_rfc3339_or(net["Created"]) > cutoff:
                    continue
                if not args.match_labels(net["Labels"]):
                    continue
                self._drop_bridge(net)
                del self._state["networks"][net["Id"]]
                deleted.append(net["Name"])
            self._save()
        return {"NetworksDeleted": deleted}

    # --- endpoints ---------------------------------------------------------------------------------------------

    def connect(self, net_ref: str, container_id: str, pid: int, *, name: str, aliases: Iterable[str] | None = None,
                ipv4: str | None = None, ipv6: str | None = None, mac: str | None = None,
                links: builtins.list[Link] | None = None, dns: builtins.list[str] | None = None,
                hosts_path: str | None = None, hostname: str | None = None) -> Dict_:
        """Attaches the running container ``pid`` to a network and returns its EndpointSettings.

        On a bridge network: a veth pair with the container end as ``eth0`` (``eth1``... for further networks),
        its addresses (IPv4, and IPv6 on a dual-stack network), and default routes through the first network's
        gateways; then the ``/etc/hosts`` of the container and of its peers on user-defined networks are
        rewritten, and on a user-defined network the embedded DNS server starts answering in the container.
        ``links`` are (container id, names) of ``--link`` targets: their address on this network under those
        names; ``dns`` the upstream servers for names that are not ours (``--dns``). ``host`` and ``none`` only
        record the membership (``none`` brings up ``lo``).
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
                  "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPv6Gateway": "",
                  "Interface": "", "DefaultRoute": False, "Links": [list(link) for link in links or []],
                  "Dns": list(dns or [])}
            if net["Driver"] == "null":
                in_netns_of(pid, loopback_up)
            elif net["Driver"] == "bridge":
                self._attach(net, ep, current, ipv4, ipv6, mac)
            self._state["endpoints"].setdefault(container_id, {})[net["Id"]] = ep
            self._save(durable=False)
            self._refresh_hosts(self._neighbours(container_id))
            if net["Name"] not in PREDEFINED and net["Driver"] == "bridge":
                try:
                    self._dns.listen(container_id, pid)
                except OSError as exc:
                    log.warning("no embedded DNS for %s: %s", container_id[:12], exc)
            return self._settings(net, container_id, ep)

    def _attach(self, net: Dict_, ep: Dict_, current: dict[str, Dict_], ipv4: str | None, ipv6: str | None,
                mac: str | None) -> None:
        configs = _configs(net)
        user_defined = net["Name"] not in PREDEFINED
        if not user_defined and ep["Aliases"]:
            raise InvalidParameter("network-scoped alias is supported only for containers in user defined networks")
        if (ipv4 or ipv6) and not user_defined:
            raise InvalidParameter("user specified IP address is supported on user defined networks only")
        if ipv6 and 6 not in configs:
            raise InvalidParameter(f"invalid IPv6 address {ipv6}: network {net['Name']} does not have IPv6 enabled")
        if (ipv4 and 4 not in net.get("_user_subnets", [4])) or (ipv6 and 6 not in net.get("_user_subnets", [6])):
            raise InvalidParameter("user specified IP address is supported only when connecting to networks with "
                                   "user configured subnets")
        members = list(self._members(net["Id"]).values())
        assigned: dict[int, tuple[str, int, str]] = {}
        for version, config in sorted(configs.items()):
            field, last = ("IPAddress", "_last") if version == 4 else ("GlobalIPv6Address", "_last6")
            subnet = ipam.parse_subnet(config["Subnet"])
            used = {str(e.get(field)) for e in members} | {config["Gateway"]}
            used.update((config.get("AuxiliaryAddresses") or {}).values())
            wanted = ipv4 if version == 4 else ipv6
            if wanted:
                address = ipam.parse_address(wanted, subnet, f"IPv{version}")
                if address in used:
                    raise Conflict("Address already in use")
            else:
                pool = ipam.parse_subnet(config["IPRange"]) if config.get("IPRange") else subnet
                address = ipam.allocate(pool, used, net.get(last))
                net[last] = address
            assigned[version] = (address, subnet.prefixlen, config["Gateway"])
        if mac:
            if not re.fullmatch(r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}", mac) or int(mac[:2], 16) & 1:
                raise InvalidParameter(f"invalid MAC address: {mac}")
            mac = mac.lower()
        elif 4 in assigned:
            mac = ipam.mac_for(assigned[4][0])
        else:
            mac = "02:42:" + ":".join(f"{byte:02x}" for byte in secrets.token_bytes(4))
        taken_ifaces = {e["Interface"] for e in current.values()}
        interface = next(f"eth{n}" for n in range(len(taken_ifaces) + 1) if f"eth{n}" not in taken_ifaces)
        route = not net["Internal"] and not any(e["DefaultRoute"] for e in current.values())
        v4, v6 = assigned.get(4, ("", 0, "")), assigned.get(6, ("", 0, ""))
        ep.update(IPAddress=v4[0], IPPrefixLen=v4[1], Gateway=v4[2], GlobalIPv6Address=v6[0],
                  GlobalIPv6PrefixLen=v6[1], IPv6Gateway=v6[2], MacAddress=mac,
                  HostVeth="veth" + ep["EndpointID"][:7], Interface=interface, DefaultRoute=route)
        self._ensure_bridge(net)
        addresses = [(address, prefix) for address, prefix, _ in assigned.values()]
        gateways = [gateway for _, _, gateway in assigned.values()] if route else []
        try:
            with RtNetlink() as nl:
                nl.add_veth(ep["HostVeth"], interface, ep["MacAddress"], ep["Pid"], _mtu(net),
                            socket.if_nametoindex(net["_bridge"]))
            in_netns_of(ep["Pid"], lambda: configure_inside(interface, addresses, gateways))
        except Exception:
            _delete_link(ep["HostVeth"])
            self._drop_bridge_if_idle(net)
            raise

    def _ensure_bridge(self, net: Dict_, reconcile: bool = False) -> None:
        """Creates the bridge with its gateway addresses and rules if missing; ``reconcile`` re-checks the rules."""
        bridge = net["_bridge"]
        configs = _configs(net)
        created = not link_exists(bridge)
        if created:
            with RtNetlink() as nl:
                nl.add_bridge(bridge, _mtu(net))
                for config in configs.values():
                    nl.add_address(socket.if_nametoindex(bridge), config["Gateway"],
                                   ipam.parse_subnet(config["Subnet"]).prefixlen)
            if not net["Internal"]:
                enable_ip_forward()
        if created or reconcile:
            self._firewall.add(bridge, self._bridge_rules(net))

    def _bridge_rules(self, net: Dict_) -> dict[str, builtins.list[str]]:
        options = net["Options"]
        return bridge_rules(net["_bridge"], _configs(net)[4]["Subnet"], net["Internal"],
                            icc=_flag(None, options.get(OPT_ICC), OPT_ICC),
                            masquerade=_flag(None, options.get(OPT_MASQUERADE), OPT_MASQUERADE))

    def _drop_bridge(self, net: Dict_, thorough: bool = False) -> None:
        """Removes an idle network's bridge and its rules; a bridge someone else still has ports on is left alone.
        ``thorough`` also looks for rules when the bridge is already gone (after a crash)."""
        bridge = net.get("_bridge")
        if not bridge:
            return
        self._unlinker.settle()  # released endpoints' veths are no ports that keep the bridge
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
            "IPv6Gateway": ep.get("IPv6Gateway", ""), "GlobalIPv6Address": ep.get("GlobalIPv6Address", ""),
            "GlobalIPv6PrefixLen": ep.get("GlobalIPv6PrefixLen", 0),
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
            if not any(self._state["networks"][nid]["Name"] not in PREDEFINED for nid in current):
                self._dns.forget(container_id)
            self._save(durable=False)
            self._refresh_hosts(neighbours)

    def _move_default_route(self, current: dict[str, Dict_]) -> None:
        for nid, other in current.items():
            if other["Gateway"] and not self._state["networks"][nid]["Internal"]:
                gateways = [other["Gateway"]] + ([other["IPv6Gateway"]] if other.get("IPv6Gateway") else [])
                try:
                    in_netns_of(other["Pid"], lambda: move_default_route(other["Interface"], gateways))
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
            self._dns.forget(container_id)
            neighbours = self._neighbours(container_id)
            endpoints = self._state["endpoints"].pop(container_id, {})
            self._unlinker.delete(ep["HostVeth"] for ep in endpoints.values() if ep["HostVeth"])
            self._save(durable=False)
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
                own = [ep["Hostname"]] + ([ep["Name"], *ep["Aliases"]] if user_defined else [])
                entries += [(address, own) for address in _addresses(ep)]
            for nid, ep in endpoints.items():
                members = self._members(nid)
                for target, names in ep.get("Links") or []:
                    if target in members:
                        entries += [(address, names) for address in _addresses(members[target])]
                if self._state["networks"][nid]["Name"] in PREDEFINED:
                    continue
                for peer, other in members.items():
                    if peer != cid:
                        entries += [(address, [other["Name"], *other["Aliases"], peer[:12]])
                                    for address in _addresses(other)]
            hosts.write_block(path, hosts.render_block(entries))

    def unlink(self, container_id: str, alias: str) -> None:
        """Forgets the ``--link`` a container has under ``alias`` (``DELETE /containers/...?link=true``)."""
        with self._lock:
            for ep in self._state["endpoints"].get(container_id, {}).values():
                ep["Links"] = [link for link in ep.get("Links") or [] if link[1][0] != alias]
            self._save(durable=False)
            self._refresh_hosts([container_id])

    # --- embedded DNS ------------------------------------------------------------------------------------------

    def lookup(self, container_id: str, name: str) -> tuple[builtins.list[str], builtins.list[str]] | None:
        """The (IPv4, IPv6) addresses ``name`` has for a container on its user-defined networks, as dockerd's
        resolver sees it: peers by name, short id and alias, the container's links, and ``name.network``; None
        when the name is none of these."""
        name = name.rstrip(".").lower()
        v4: list[str] = []
        v6: list[str] = []
        found = False
        with self._lock:
            for nid, ep in self._state["endpoints"].get(container_id, {}).items():
                net = self._state["networks"][nid]
                if net["Name"] in PREDEFINED:
                    continue
                suffix = "." + net["Name"].lower()
                wanted = {name, name[:-len(suffix)] if name.endswith(suffix) else name}
                members = self._members(nid)
                matches = [other for peer, other in members.items()
                           if wanted & {n.lower() for n in (other["Name"], peer[:12], *other["Aliases"])}]
                matches += [members[target] for target, names in ep.get("Links") or []
                            if target in members and wanted & {n.lower() for n in names}]
                for other in matches:
                    found = True
                    v4 += [other["IPAddress"]] if other["IPAddress"] and other["IPAddress"] not in v4 else []
                    v6 += [other["GlobalIPv6Address"]] if other.get("GlobalIPv6Address") and \
                        other["GlobalIPv6Address"] not in v6 else []
        return (v4, v6) if found else None

    def reverse(self, container_id: str, address: str) -> str | None:
        """``name.network`` of the peer with ``address`` on a user-defined network of the container (PTR)."""
        with self._lock:
            for nid in self._state["endpoints"].get(container_id, {}):
                net = self._state["networks"][nid]
                if net["Name"] in PREDEFINED:
                    continue
                for other in self._members(nid).values():
                    if address in _addresses(other):
                        return f"{other['Name']}.{net['Name']}"
        return None

    def upstreams(self, container_id: str) -> builtins.list[str]:
        """Where names that are not ours go: the container's ``--dns`` servers, else the host's resolv.conf
        ones (asked from the host's namespace, so a loopback resolver such as systemd-resolved works)."""
        with self._lock:
            for ep in self._state["endpoints"].get(container_id, {}).values():
                if ep.get("Dns"):
                    return list(ep["Dns"])
        return host_nameservers(self.resolv_conf)

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
            had_ports = self._unpublish(container_id)
            if not wanted and not had_ports:
                return ports  # nothing to open, nothing to write: most containers publish no port
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
            self._save(durable=False)
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
                self._save(durable=False)

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
            for cid, eps in self._state["endpoints"].items():
                if any(self._state["networks"][nid]["Name"] not in PREDEFINED for nid in eps):
                    try:
                        self._dns.listen(cid, running[cid])
                    except OSError as exc:
                        log.warning("no embedded DNS for %s: %s", cid[:12], exc)
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
        """Stops the port proxies and the DNS server and removes the bridges no container uses; containers keep
        their addresses and the state stays for ``restore``."""
        with self._lock:
            for cid in list(self._proxies):
                self._stop_proxies(cid)
            for net in self._networks():
                self._drop_bridge_if_idle(net)
            self._unlinker.stop()
        self._dns.close()


# --- helpers -------------------------------------------------------------------------------------------------------

def _addresses(ep: Dict_) -> list[str]:
    return [address for address in (ep["IPAddress"], ep.get("GlobalIPv6Address")) if address]


def host_nameservers(path: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf (none when it cannot be read)."""
    try:
        with open(path) as conf:
            lines = conf.read().splitlines()
    except OSError:
        return []
    return [words[1] for words in (line.split() for line in lines) if len(words) >= 2 and words[0] == "nameserver"]


def _delete_link(name: str) -> None:
    with RtNetlink() as nl:
        nl.delete_link(name)


class _Unlinker:
    """Deletes the host ends of released endpoints' veth pairs in a thread of its own. A released endpoint's
    container has stopped, so nothing uses the link; deleting it waits for the kernel (1 to 20 ms, in
    ``synchronize_net``) and the exit of every container, hence ``docker run --rm``, would wait with it. Its
    lease is free at once: addresses are handed out round the subnet, so it is not the next one given."""

    def __init__(self) -> None:
        self._names: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def delete(self, names: Iterable[str]) -> None:
        for name in names:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="net-unlink", daemon=True)
                    self._thread.start()
            self._names.put(name)

    def _run(self) -> None:
        while True:
            name = self._names.get()
            try:
                if name is None:
                    return
                _delete_link(name)
            except Exception as exc:  # noqa: BLE001 - a link that cannot go must not stop the next ones
                log.warning("cannot delete %s: %s", name, exc)
            finally:
                self._names.task_done()

    def settle(self) -> None:
        """Returns once every link given so far is deleted."""
        self._names.join()

    def stop(self) -> None:
        """Deletes what is queued and ends the thread (a later ``delete`` starts another)."""
        with self._lock:
            if self._thread is None:
                return
            self._names.put(None)
            thread, self._thread = self._thread, None
        thread.join()


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


def _flag(value: Any, option: str | None, name: str) -> bool:
    """A boolean given in the body (``value``) or as the driver option ``name`` (its text ``option``)."""
    if value is not None:
        return bool(value)
    if option is None:
        return name != OPT_ENABLE_IPV6  # icc and masquerade default to on, IPv6 to off
    text = option.lower()
    if text not in ("1", "t", "true", "0", "f", "false"):
        raise InvalidParameter(f'driver-opt "{name}" is not a valid bool')
    return text in ("1", "t", "true")


def _configs(net: Dict_) -> dict[int, Dict_]:
    """A network's IPAM configs by address family."""
    return {ipam.family(config["Subnet"]): config for config in net["IPAM"]["Config"]}


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


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidParameter(f"invalid filter '{what}={value}'")
    return value
