"""The ``local`` driver, the default: an isolated host on this Linux machine (see ``drivers.nshost``).

Why it exists: a real SSH host in a fraction of a second, with no cloud and no VM, for trying machines out and for
end-to-end tests. The host's files live in the machine's store folder (``<store>/machines/<name>/host``), so
``rm`` removing that folder leaves nothing behind. Needs root (network namespaces, mounts).
"""

from __future__ import annotations

import os

from machines.drivers.base import Driver, Flag, Ledger, SSHDetails, State
from machines.drivers.nshost import (
    DEFAULT_BRIDGE,
    DEFAULT_SUBNET,
    Bridge,
    HostState,
    IsolatedHost,
    NsHostError,
    missing_tools,
)
from machines.errors import PreCreateError

_STATES = {HostState.RUNNING: State.RUNNING, HostState.STOPPED: State.STOPPED, HostState.NOT_FOUND: State.NOT_FOUND}


class LocalDriver(Driver):
    """Hosts made of a network namespace on a bridge, their own mount/PID/UTS namespaces and sshd."""

    name = "local"
    description = "an isolated host on this Linux machine (network namespace, copy-on-write root, sshd); needs root"
    flags = [
        Flag("bridge", "bridge in the machine's network namespace that hosts are attached to",
             default=DEFAULT_BRIDGE, envvar="MACHINES_LOCAL_BRIDGE"),
        Flag("subnet", "the bridge's address and prefix; hosts get the other addresses of that network",
             default=DEFAULT_SUBNET, envvar="MACHINES_LOCAL_SUBNET"),
        Flag("address", "fixed address of the host on the bridge (default: the lowest free one)",
             envvar="MACHINES_LOCAL_ADDRESS"),
    ]
    # The host's / is an overlay, and overlayfs cannot use an upper dir on an overlay: container storage must live on
    # /data, the host's own plain folder.
    runtime_data_root = "/data/runtime"

    @property
    def _host(self) -> IsolatedHost:
        return IsolatedHost(os.path.join(self.store_dir, "host"))

    def pre_create_check(self) -> None:
        if os.geteuid() != 0:
            raise PreCreateError("the local driver needs root (it makes network namespaces and mounts): "
                                 "run machines as root, e.g. with sudo")
        missing = missing_tools()
        if missing:
            raise PreCreateError(f"the local driver needs {', '.join(missing)}: install them with apt-get")
        if len(self.machine_name) > 63:
            raise PreCreateError(f"a local machine's name is its hostname: at most 63 characters, "
                                 f"not {len(self.machine_name)}")
        try:
            bridge = Bridge(self.config.get("bridge") or DEFAULT_BRIDGE, self.config.get("subnet") or DEFAULT_SUBNET)
            bridge.check_free()
        except NsHostError as error:
            raise PreCreateError(f"{error} (choose another with --local-subnet)") from None

    def create(self, ledger: Ledger) -> None:
        with open(f"{self.ssh_key_path}.pub") as file:
            public_key = file.read()
        host = IsolatedHost.create(
            self._host.state_dir, self.machine_name, public_key,
            bridge=self.config.get("bridge") or DEFAULT_BRIDGE, subnet=self.config.get("subnet") or DEFAULT_SUBNET,
            address=self.config.get("address") or None, record=ledger.record,
            hidden=[os.path.dirname(os.path.dirname(self.store_dir))])  # the store: other machines' keys and certs
        ledger.record(f"sshd of host {self.machine_name}", host.kill)
        host.start()

    def remove(self) -> None:
        self._host.remove()

    def start(self) -> None:
        self._host.start()

    def stop(self) -> None:
        self._host.stop()

    def kill(self) -> None:
        self._host.kill()

    def state(self) -> State:
        return _STATES[self._host.state()]

    def ip(self) -> str:
        return self._host.address

    def ssh_details(self) -> SSHDetails:
        host = self._host
        return SSHDetails(host.address, host.port, "root", self.ssh_key_path)

    def initial_host_key(self) -> str | None:
        """The host key this driver generated, so even the first connection is verified."""
        host = self._host
        return host.host_public_key if host.exists() else None

