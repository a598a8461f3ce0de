"""Container networking: bridge networks with IPAM, veth endpoints, /etc/hosts peers and published ports."""
from __future__ import annotations

from machines.runtime.network.manager import DEFAULT_SUBNET, NetworkManager

__all__ = ["DEFAULT_SUBNET", "NetworkManager"]
