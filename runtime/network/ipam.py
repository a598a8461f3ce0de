"""IP address management: subnets for networks and addresses for endpoints.

Subnets come from a pool and must not overlap another network or a route the host already has (the way Docker
avoids hijacking the host's LAN). Addresses are handed out round-robin from after the last one given, so an address
just released is not reused at once and a stale peer entry cannot point at a new container.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Union

from machines.runtime.errors import Forbidden, InvalidParameter, Unavailable
from machines.runtime.network.links import ip_query

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

DEFAULT_V6_POOL = "fd6d:6163:6869::/48"  # a ULA prefix of our own ("mach"), split in /64s as Docker does


def parse_subnet(text: str) -> Network:
    """An IPv4 (at most /30) or IPv6 (at most /126) CIDR."""
    try:
        subnet = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidParameter(f"invalid subnet {text}: invalid CIDR block notation") from None
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise InvalidParameter(f"subnet {text} is too small: at most /{subnet.max_prefixlen - 2}")
    return subnet


def family(text: str) -> int:
    """4 or 6: the family of an address or CIDR (0 when it is neither)."""
    try:
        return ipaddress.ip_network(text, strict=False).version
    except ValueError:
        return 0


def parse_address(text: str, subnet: Network, what: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidParameter(f"invalid {what} address: {text}") from None
    if address.version != subnet.version or address not in subnet or address == subnet.network_address or (
            address.version == 4 and address == subnet.broadcast_address):
        raise InvalidParameter(f"no matching subnet for {what} {text}")
    return str(address)


def host_routes() -> list[Network]:
    """Destinations the host routes already (its own LANs), which a new network must not shadow."""
    routes = []
    for line in ip_query("-4", "route", "show", "table", "all").splitlines():
        words = line.split()
        if not words or words[0] in ("default", "broadcast", "local", "unreachable", "prohibit", "blackhole"):
            continue
        try:
            routes.append(ipaddress.ip_network(words[0], strict=False))
        except ValueError:
            continue
    return [route for route in routes if isinstance(route, ipaddress.IPv4Network)]


def check_free(subnet: Network, taken: Iterable[Network]) -> None:
    for other in taken:
        if other.version == subnet.version and subnet.overlaps(other):
            raise Forbidden("Pool overlaps with other one on this address space")


def pick_subnet(pool: Network, prefix: int, taken: Iterable[Network]) -> Network:
    """The first ``/prefix`` of the pool that overlaps nothing in ``taken``."""
    busy = [other for other in taken if other.version == pool.version]
    for candidate in pool.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(other) for other in busy):
            return candidate
    raise Unavailable("all predefined address pools have been fully subnetted")


def allocate(subnet: Network, used: set[str], last: str | None) -> str:
    """The next free host address after ``last`` (wrapping), skipping the ones in ``used``."""
    hosts = int(subnet.broadcast_address) - int(subnet.network_address) - (1 if subnet.version == 4 else 0)
    first = int(subnet.network_address) + 1
    start = int(ipaddress.ip_address(last)) + 1 - first if last else 0
    for step in range(hosts):
        candidate = str(type(subnet.network_address)(first + (start + step) % hosts))
        if candidate not in used:
            return candidate
    raise Unavailable(f"no available IPv{subnet.version} addresses on this network's address pools: {subnet}")


def mac_for(address: str) -> str:
    """Docker's scheme, 02:42 then the IPv4 bytes: stable for an address and locally administered."""
    return "02:42:" + ":".join(f"{byte:02x}" for byte in ipaddress.ip_address(address).packed)
