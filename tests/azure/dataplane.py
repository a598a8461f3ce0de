"""The data plane behind the fake Resource Manager: a real SSH host for every VM whose NIC is on the test bridge.

The fake keeps ARM's books; this plays what Azure's fabric and the image's provisioning agent would do, the moment
the fake accepts a VM: an isolated host (``drivers.nshost``) at exactly the NIC's private address, the admin user
of ``osProfile`` with its SSH keys, and the custom data applied as cloud-init would (our injected host key, more
authorized keys). Deallocate and power-off stop the host, start boots it again, delete removes it.

One accommodation of the test world, on the host's own upper layer: the admin user is an alias of uid 0 (test hosts
have no ``sudo`` package, so a one-line ``sudo`` that only drops its options stands in for Azure's passwordless sudo).
A container overlay cannot sit on the host's overlay root, so tests that provision pass ``--runtime-data-root
/data/runtime`` (the host's ext4-backed ``/data``).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

from machines.drivers.nshost import Bridge, IsolatedHost
from tests.support.cloudinit import cloud_configs

log = logging.getLogger(__name__)

SUDO = """#!/bin/sh
# Test host: the admin user is uid 0 already; behave as passwordless sudo by dropping the options.
while [ $# -gt 0 ]; do case "$1" in -n|-E|-H|-S) shift ;; --) shift; break ;; *) break ;; esac; done
exec "$@"
"""


class AzureDataPlane:
    """Follows the fake's VMs (it is the fake's ``listener``) with one isolated host each."""

    def __init__(self, bridge: Bridge, state_root: Path) -> None:
        self.bridge = bridge
        self.state_root = state_root
        self.hosts: dict[str, IsolatedHost] = {}  # lower-cased VM id -> host
        # Set to play an image whose provisioning agent fails: hosts come up without any authorized key.
        self.agent_fails = False

    def vm_created(self, vm: dict[str, Any], private_ip: str) -> None:
        if ipaddress.ip_address(private_ip) not in self.bridge.network or vm["id"].lower() in self.hosts:
            return
        profile = vm["properties"]["osProfile"]
        authorized = [key["keyData"] for key in profile.get("linuxConfiguration", {}).get("ssh", {}).get("publicKeys", [])]
        host_keys: dict[str, str] = {}
        for config in cloud_configs(base64.b64decode(profile.get("customData") or "").decode()):
            authorized += config.get("ssh_authorized_keys") or []
            host_keys.update(config.get("ssh_keys") or {})
        host = IsolatedHost.create(
            str(self.state_root / vm["properties"]["vmId"]), profile["computerName"],
            "" if self.agent_fails else "\n".join(dict.fromkeys(authorized)),
            bridge=self.bridge.name, subnet=self.bridge.subnet, address=private_ip,
            host_key_private=host_keys.get("ed25519_private"), host_key_public=host_keys.get("ed25519_public"),
        )
        self.hosts[vm["id"].lower()] = host
        self._add_admin(host, profile["adminUsername"])
        host.start()

    def vm_power(self, vm: dict[str, Any], running: bool) -> None:
        host = self.hosts.get(vm["id"].lower())
        if host is None:
            return
        if running:
            host.start()
        else:
            host.stop()

    def vm_deleted(self, vm: dict[str, Any]) -> None:
        host = self.hosts.pop(vm["id"].lower(), None)
        if host is not None:
            host.remove()

    def close(self) -> None:
        for key in list(self.hosts):
            self.hosts.pop(key).remove()

    @staticmethod
    def _add_admin(host: IsolatedHost, user: str) -> None:
        """The admin user (uid 0, root's home and keys) and the stand-in ``sudo``."""
        upper = Path(host.state_dir) / "upper"
        passwd = Path("/etc/passwd").read_text()
        (upper / "etc" / "passwd").write_text(passwd + f"{user}:x:0:0:{user}:/root:/bin/bash\n")
        bin_dir = upper / "usr" / "local" / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        (bin_dir / "sudo").write_text(SUDO)
        os.chmod(bin_dir / "sudo", 0o755)
