"""The driver interface: what every way of getting a host must provide.

A driver knows its cloud or hypervisor and nothing about containers. Drivers are plain classes found through the
entry-point group ``machines.drivers`` (like Libcloud's ``NodeDriver`` registry), so a third-party package can add
one by declaring ``[project.entry-points."machines.drivers"] mycloud = "pkg.module:MyDriver"``.

Lifecycle of one driver object: the core builds it with ``Driver(machine_name, store_dir, flags, discovered=...,
host_options=...)``. ``flags`` are the user's create-flag values (keys are ``Flag.key()``); ``discovered`` is what the
driver found out or made (instance id, addresses, the AMI it resolved); ``host_options`` is the typed
``machines.hostoptions.HostOptions`` of the machine. The driver reads and writes both dicts through ``config``, a
view whose writes go to ``discovered``, so the user's flags stay as the user gave them. The core persists both in
the machine's ``config.json`` (``driver`` and ``driver_state``) after every call that may change them.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from machines.errors import DriverError
from machines.hostoptions import HostOptions
from machines.store import KEY_FILE


class State(str, enum.Enum):
    """Machine states as ``ls`` and ``status`` print them."""

    RUNNING = "Running"
    STOPPED = "Stopped"
    STARTING = "Starting"
    STOPPING = "Stopping"
    PAUSED = "Paused"  # Docker Machine's word for a VM frozen in memory (VirtualBox/libvirt pause)
    ERROR = "Error"
    NOT_FOUND = "NotFound"
    TIMEOUT = "Timeout"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Flag:
    """One create flag a driver accepts.

    On the command line it appears as ``--<driver>-<name>`` and its environment variable is ``envvar``
    (Docker Machine's convention: ``AWS_DEFAULT_REGION`` etc.). ``type`` is one of str, int, bool, list (a
    repeatable string flag).
    """

    name: str
    help: str
    type: type = str
    default: Any = None
    envvar: str | None = None
    secret: bool = False  # never printed by inspect, logs or errors

    def option_name(self, driver_name: str) -> str:
        return f"--{driver_name}-{self.name}"

    def key(self) -> str:
        """The key under which the value is kept in ``Driver.config`` (dashes become underscores)."""
        return self.name.replace("-", "_")


@dataclasses.dataclass
class SSHDetails:
    """How to reach the host's sshd. ``host_key`` is pinned at create and verified on every connection."""

    host: str
    port: int
    user: str
    key_path: str


UndoStep = Callable[[], object]  # what an undo returns is ignored


class Ledger:
    """The record of resources a create has made, so a failure can undo exactly those, newest first.

    A driver calls ``ledger.record(description, undo)`` right after each resource exists. The core persists the
    descriptions while the create runs (so a crash leaves a trace ``rm`` can clean) and calls ``rollback`` on any
    failure or Ctrl-C, unless the user asked for ``--keep-on-error``.
    """

    def __init__(self, on_change: Callable[[list[str]], None] | None = None) -> None:
        self._steps: list[tuple[str, UndoStep]] = []
        self._on_change = on_change

    def record(self, description: str, undo: UndoStep) -> None:
        self._steps.append((description, undo))
        if self._on_change:
            self._on_change(self.descriptions())

    def descriptions(self) -> list[str]:
        return [description for description, _ in self._steps]

    def rollback(self) -> list[str]:
        """Undo every recorded step, newest first; returns the messages of steps whose undo failed."""
        failures: list[str] = []
        while self._steps:
            description, undo = self._steps.pop()
            try:
                undo()
            except Exception as error:  # noqa: BLE001 - keep undoing the rest, report all failures
                failures.append(f"{description}: {error}")
            if self._on_change:
                self._on_change(self.descriptions())
        return failures


class Driver:
    """Base class of all drivers. Subclasses override the lifecycle methods they support.

    Methods that a driver does not support raise ``DriverError`` with a message naming the driver, the way
    Libcloud's base ``NodeDriver`` does, so the CLI can report it in one line.
    """

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    flags: ClassVar[list[Flag]] = []
    # Where the runtime keeps its data on this driver's hosts, when the driver knows better than the default.
    runtime_data_root: ClassVar[str | None] = None
    # The flag (key) of user data for cloud-init, for drivers whose hosts boot with it: ``--cloud-config`` sets it.
    cloud_config_flag: ClassVar[str | None] = None

    def __init__(
        self,
        machine_name: str,
        store_dir: str,
        config: Mapping[str, Any] | None = None,
        *,
        discovered: Mapping[str, Any] | None = None,
        host_options: HostOptions | None = None,
    ) -> None:
        self.machine_name = machine_name
        self.store_dir = store_dir
        self.host_options = host_options or HostOptions()
        declared = {flag.key() for flag in self.flags}
        given = {**self.flag_defaults(), **(config or {})}  # library users may pass only some flags
        # Keys that are no flag of this driver are state it found (records written before the split mixed them).
        self.flag_values: dict[str, Any] = {key: value for key, value in given.items() if key in declared}
        self.discovered: dict[str, Any] = {key: value for key, value in given.items() if key not in declared}
        self.discovered.update(discovered or {})
        self.config: collections.ChainMap[str, Any] = collections.ChainMap(self.discovered, self.flag_values)

    # -- helpers shared by drivers -------------------------------------------------------------------------
    @classmethod
    def flag_defaults(cls) -> dict[str, Any]:
        """Values of every flag taken from its env var or its default, for callers that pass no flags."""
        values: dict[str, Any] = {}
        for flag in cls.flags:
            raw = os.environ.get(flag.envvar) if flag.envvar else None
            if raw is None:
                values[flag.key()] = list(flag.default or []) if flag.type is list else flag.default
            elif flag.type is bool:
                values[flag.key()] = raw.strip().lower() not in ("", "0", "false", "no", "off")
            elif flag.type is int:
                values[flag.key()] = int(raw)
            elif flag.type is list:
                values[flag.key()] = [item for item in raw.split(",") if item]
            else:
                values[flag.key()] = raw
        return values

    def public_config(self) -> dict[str, Any]:
        """The user's flag values with the secret ones masked, for ``inspect`` and logs."""
        secret_keys = {flag.key() for flag in self.flags if flag.secret}
        return {key: ("<hidden>" if key in secret_keys and value else value) for key, value in self.flag_values.items()}

    @property
    def ssh_key_path(self) -> str:
        """The machine's own private key, made by the core before ``create`` is called."""
        return os.path.join(self.store_dir, KEY_FILE)

    def api_over_tls(self) -> bool:
        """Whether the runtime's API will listen on TCP 2376 with TLS (the default) rather than only through SSH.

        Cloud drivers open the port only when it is used; the choice is ``machines create --api``, a host option.
        """
        return self.host_options.api_over_tls

    def _unsupported(self, what: str) -> DriverError:
        return DriverError(f"the {self.name} driver does not support {what}")

    # -- lifecycle -----------------------------------------------------------------------------------------
    def pre_create_check(self) -> None:
        """Validate flags and the environment before anything is made; raise ``PreCreateError`` to refuse."""

    def create(self, ledger: Ledger) -> None:
        """Make the host. Record every resource in ``ledger`` as soon as it exists."""
        raise self._unsupported("create")

    def remove(self) -> None:
        """Delete everything the driver made for this machine; resources already gone are not an error."""
        raise self._unsupported("remove")

    def start(self) -> None:
        raise self._unsupported("start")

    def stop(self) -> None:
        raise self._unsupported("stop")

    def restart(self) -> None:
        """Default: stop then start; drivers with a native reboot override it."""
        self.stop()
        self.start()

    def kill(self) -> None:
        raise self._unsupported("kill")

    def state(self) -> State:
        raise self._unsupported("state")

    def ip(self) -> str:
        raise self._unsupported("ip")

    def ssh_details(self) -> SSHDetails:
        raise self._unsupported("ssh")

    def open_cluster_ports(self, cluster: str, ports: Sequence[tuple[int, str]]) -> None:
        """Let this machine and the other members of ``cluster`` reach each other on ``ports`` (``(port, "tcp" or
        "udp")``), and nobody else. Drivers whose hosts sit behind a cloud firewall implement it; by default there
        is no such firewall and nothing to do."""

    def close_cluster_ports(self, cluster: str, *, last: bool) -> None:
        """Take this machine out of what ``open_cluster_ports`` opened; ``last``: no member is left, remove it all."""

    def private_ip(self) -> str:
        """The address other machines of the same network reach this one at (Swarm mode advertises it).

        Clouds override it with the instance's private address; by default it is ``ip()``.
        """
        return self.ip()

    def url(self, port: int = 2376) -> str:
        return f"tcp://{self.ip()}:{port}"

    def change(self, flags: Mapping[str, Any]) -> None:
        """``machines set``: change the host as ``flags`` (this driver's flag values by key) say, or refuse.

        Drivers that can resize a machine (CPUs, memory, an instance type) override this and check the state they
        need (stopped, deallocated); the caller records the new values once this returns.
        """
        names = ", ".join(f"--{self.name}-{key.replace('_', '-')}" for key in flags)
        raise DriverError(f"the {self.name} driver cannot change {names} after create: re-create the machine")

    def initial_host_key(self) -> str | None:
        """The host's SSH public key (``"ssh-ed25519 AAAA..."``) when the driver knows it before connecting.

        Drivers that inject or read the host key (cloud-init, console output, a key they generated) return it, so
        the very first connection is verified. ``None`` means trust on first use at create time only.
        """
        return None
