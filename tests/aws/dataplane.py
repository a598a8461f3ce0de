"""The cloud's data plane for moto: a real SSH host behind every instance moto launches in the test subnet.

moto keeps EC2's books (instances, their states, their user data) but runs nothing. ``DataPlane`` watches it and,
for each instance with a private address on the test bridge, makes an isolated host (``drivers.nshost``) with
exactly that address and applies the instance's user data the way cloud-init would: the authorized key and the
SSH host key from our cloud-config. It stops the host when the instance is stopped, starts it again when the
instance runs again, and removes it when the instance is terminated (or vanishes with a moto reset).
"""

from __future__ import annotations

import base64
import gzip
import ipaddress
import logging
import threading
from pathlib import Path
from typing import Any

from machines.drivers.nshost import Bridge, HostState, IsolatedHost
from tests.support.cloudinit import cloud_configs

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
HOST_START_TIMEOUT = 60.0  # sshd listens in a tenth of a second, but CI machines can be very busy
STOPPED_STATES = {"stopping", "stopped"}
GONE_STATES = {"shutting-down", "terminated"}


class DataPlane:
    """Runs one test host per instance of moto whose private address lies in ``bridge``'s network."""

    def __init__(self, client: Any, bridge: Bridge, state_root: Path) -> None:
        self.client = client
        self.bridge = bridge
        self.state_root = state_root
        self.hosts: dict[str, IsolatedHost] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aws data plane", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> DataPlane:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop watching and remove every host (the test is over, whatever moto still holds)."""
        self._stop.set()
        self._thread.join()
        for instance_id in list(self.hosts):
            self._remove(instance_id)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.sync()
            except Exception as error:  # noqa: BLE001 - keep playing the cloud; the test asserts on errors
                self.errors.append(f"{type(error).__name__}: {error}")
                log.exception("data plane")

    def sync(self) -> None:
        """Bring the hosts in line with moto's instances once."""
        with self._lock:
            seen: set[str] = set()
            for reservation in self.client.describe_instances()["Reservations"]:
                for instance in reservation["Instances"]:
                    address = instance.get("PrivateIpAddress")
                    if not address or ipaddress.ip_address(address) not in self.bridge.network:
                        continue
                    seen.add(instance["InstanceId"])
                    self._follow(instance)
            for instance_id in set(self.hosts) - seen:
                self._remove(instance_id)

    def _follow(self, instance: dict[str, Any]) -> None:
        instance_id, state = instance["InstanceId"], instance["State"]["Name"]
        host = self.hosts.get(instance_id)
        if state in GONE_STATES:
            if host is not None:
                self._remove(instance_id)
            return
        if host is None:
            host = self.hosts[instance_id] = self._boot(instance)
        running = host.state() is HostState.RUNNING
        if state in STOPPED_STATES and running:
            host.stop()
        elif state in ("pending", "running") and not running:
            host.start(timeout=HOST_START_TIMEOUT)

    def _boot(self, instance: dict[str, Any]) -> IsolatedHost:
        """A host for a newly launched instance, configured from its user data as cloud-init would."""
        attribute = self.client.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
        user_data = base64.b64decode(attribute["UserData"].get("Value", ""))
        if user_data[:2] == b"\x1f\x8b":  # gzipped, as the driver sends user data over 16 KB: cloud-init unpacks it
            user_data = gzip.decompress(user_data)
        authorized: list[str] = []
        host_keys: dict[str, str] = {}
        for config in cloud_configs(user_data.decode()):
            authorized += config.get("ssh_authorized_keys") or []
            host_keys.update(config.get("ssh_keys") or {})
        tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
        return IsolatedHost.create(
            str(self.state_root / instance["InstanceId"]),
            tags.get("Name", instance["InstanceId"]),
            "\n".join(authorized),
            bridge=self.bridge.name,
            subnet=self.bridge.subnet,
            address=instance["PrivateIpAddress"],
            host_key_private=host_keys.get("ed25519_private"),
            host_key_public=host_keys.get("ed25519_public"),
        )

    def _remove(self, instance_id: str) -> None:
        host = self.hosts.pop(instance_id)
        host.remove()
