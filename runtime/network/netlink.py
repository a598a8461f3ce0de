"""A minimal rtnetlink client: the few link, address and route requests a container start needs.

Talking to the kernel directly instead of running ``ip`` takes a connect from tens of milliseconds (two process
starts, more under load) to well under one. A netlink socket belongs to the network namespace of the thread that
creates it, so code running inside ``links.in_netns`` configures the container's side.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct

from machines.runtime.errors import HostError

RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 20, 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
NLMSG_ERROR = 2
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_PID = 1, 3, 4, 10, 18, 19
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
RTA_OIF, RTA_GATEWAY = 4, 5
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
NLA_F_NESTED = 0x8000


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("HH", length, kind) + payload + b"\0" * (-length % 4)


def _name(value: str) -> bytes:
    return value.encode() + b"\0"


def _ifinfo(index: int = 0, up: bool = False) -> bytes:
    return struct.pack("BxHiII", socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


class RtNetlink:
    """One request at a time over a NETLINK_ROUTE socket of the calling thread's namespace; use as a context."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def __enter__(self) -> RtNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes, what: str) -> None:
        """Sends one request and waits for its acknowledgement; a kernel refusal becomes a HostError."""
        self.seq += 1
        header = struct.pack("IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0)
        self.sock.send(header + body)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, msg_type, _, seq, _ = struct.unpack_from("IHHII", data, offset)
                if msg_type == NLMSG_ERROR and seq == self.seq:
                    error = -struct.unpack_from("i", data, offset + 16)[0]
                    if error:
                        raise HostError(f"{what}: {os.strerror(error)}")
                    return
                offset += max(16, (length + 3) & ~3)

    def add_veth(self, name: str, peer: str, peer_mac: str, peer_pid: int, mtu: int, master: int) -> None:
        """A veth pair: ``name`` up on bridge ``master`` here, ``peer`` in the namespace of ``peer_pid``."""
        peer_info = _ifinfo() + _attr(IFLA_IFNAME, _name(peer)) + _attr(IFLA_ADDRESS, _mac(peer_mac)) + \
            _attr(IFLA_MTU, struct.pack("I", mtu)) + _attr(IFLA_NET_NS_PID, struct.pack("I", peer_pid))
        link_info = _attr(IFLA_INFO_KIND, b"veth") + \
            _attr(IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER | NLA_F_NESTED, peer_info))
        body = _ifinfo(up=True) + _attr(IFLA_IFNAME, _name(name)) + _attr(IFLA_MTU, struct.pack("I", mtu)) + \
            _attr(IFLA_MASTER, struct.pack("I", master)) + _attr(IFLA_LINKINFO | NLA_F_NESTED, link_info)
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create veth {name}")

    def add_bridge(self, name: str, mtu: int) -> None:
        body = _ifinfo(up=True) + _attr(IFLA_IFNAME, _name(name)) + _attr(IFLA_MTU, struct.pack("I", mtu)) + \
            _attr(IFLA_LINKINFO | NLA_F_NESTED, _attr(IFLA_INFO_KIND, b"bridge"))
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create bridge {name}")

    def delete_link(self, name: str) -> bool:
        """Deletes a link by name; False when there was none (a veth dies with its namespace)."""
        try:
            index = socket.if_nametoindex(name)
            self.request(RTM_DELLINK, 0, _ifinfo(index), f"delete {name}")
        except (OSError, HostError):
            return False
        return True

    def set_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, 0, _ifinfo(index, up=True), f"bring up link {index}")

    def add_address(self, index: int, address: str, prefix: int) -> None:
        """An IPv4 or IPv6 address; IPv6 ones skip duplicate address detection (the daemon hands them out), so
        they are usable at once instead of after DAD's second or two."""
        ip = ipaddress.ip_address(address)
        family, flags = (socket.AF_INET, 0) if ip.version == 4 else (socket.AF_INET6, IFA_F_NODAD)
        body = struct.pack("BBBBI", family, prefix, flags, RT_SCOPE_UNIVERSE, index) + \
            _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed)
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"add address {address}/{prefix}")

    def default_route(self, gateway: str, index: int) -> None:
        """Adds, or replaces, the IPv4 or IPv6 default route through ``gateway`` on link ``index``."""
        ip = ipaddress.ip_address(gateway)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        body = struct.pack("BBBBBBBBI", family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE,
                           RTN_UNICAST, 0) + \
            _attr(RTA_GATEWAY, ip.packed) + _attr(RTA_OIF, struct.pack("i", index))
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body, f"default route via {gateway}")


def configure_inside(interface: str, addresses: list[tuple[str, int]], gateways: list[str]) -> None:
    """Run inside the container's namespace: ``lo`` and the interface up, its (address, prefix) pairs, and the
    default routes through ``gateways`` (one per family, none on an internal network)."""
    index = socket.if_nametoindex(interface)
    with RtNetlink() as nl:
        nl.set_up(socket.if_nametoindex("lo"))
        for address, prefix in addresses:
            nl.add_address(index, address, prefix)
        nl.set_up(index)
        for gateway in gateways:
            nl.default_route(gateway, index)


def loopback_up() -> None:
    with RtNetlink() as nl:
        nl.set_up(socket.if_nametoindex("lo"))


def move_default_route(interface: str, gateways: list[str]) -> None:
    """Run inside the container's namespace when the network that held its default routes goes away."""
    with RtNetlink() as nl:
        for gateway in gateways:
            nl.default_route(gateway, socket.if_nametoindex(interface))


def link_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True

