"""The ``generic`` driver: a host that already exists and is reached over SSH.

``machines`` does not own the host, so it can neither start nor stop it, and ``rm`` only forgets it: nothing on
the host is touched. The user's key is copied into the machine folder so the machine keeps working if the
original moves.

The host key is pinned before the first connection when the user gives it (``--generic-ssh-host-key``, a key line or
a file holding one) or when their ``~/.ssh/known_hosts`` knows the host, hashed entries included; otherwise it is
trusted on first use and ``create`` prints its fingerprint, as ``ssh`` does.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from machines.drivers.base import Driver, Flag, Ledger, SSHDetails, State
from machines.errors import DriverError, PreCreateError

KEY_COPY = "generic_ssh_key"
PROBE_TIMEOUT = 3.0


class GenericDriver(Driver):
    name = "generic"
    description = "An existing host reached over SSH"
    flags = [
        Flag("ip-address", "IP address or host name of the host (required)", envvar="GENERIC_IP_ADDRESS"),
        Flag("ssh-user", "SSH user", default="root", envvar="GENERIC_SSH_USER"),
        Flag("ssh-key", "Private key that logs in to the host (required)", envvar="GENERIC_SSH_KEY"),
        Flag("ssh-port", "SSH port", type=int, default=22, envvar="GENERIC_SSH_PORT"),
        Flag("ssh-host-key", "The host's SSH public key, or a file holding it (default: ~/.ssh/known_hosts, "
             "else trust on first use)", envvar="GENERIC_SSH_HOST_KEY"),
    ]

    def pre_create_check(self) -> None:
        if not self.config.get("ip_address"):
            raise PreCreateError("the generic driver needs --generic-ip-address (or GENERIC_IP_ADDRESS)")
        key = self.config.get("ssh_key")
        if not key:
            raise PreCreateError("the generic driver needs --generic-ssh-key: the private key that logs in to the host")
        if not os.access(Path(key).expanduser(), os.R_OK):
            raise PreCreateError(f"cannot read SSH key {key}")
        port = self.config.get("ssh_port")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise PreCreateError(f"bad --generic-ssh-port {port!r}: give a port number 1-65535")
        self.config["ssh_host_key"] = self._expected_host_key(port)

    def _expected_host_key(self, port: int) -> str | None:
        """The key line to pin: from the flag (refused when it holds no key), else from the user's known_hosts."""
        from machines.hostkeys import known_host_key, parse_public_key  # paramiko loads only when a create needs it

        given = self.config.get("ssh_host_key")
        if not given:
            return known_host_key(Path.home() / ".ssh" / "known_hosts", str(self.config["ip_address"]), port)
        path = Path(str(given)).expanduser()
        try:
            text = path.read_text(errors="replace") if path.is_file() else str(given)
        except OSError as error:
            raise PreCreateError(f"cannot read --generic-ssh-host-key {given}: {error.strerror}") from None
        key = parse_public_key(text)
        if key is None:
            raise PreCreateError(f"--generic-ssh-host-key {given!r} holds no SSH public key: give a key line "
                                 "(ssh-ed25519 AAAA...) or a file holding one")
        return key

    def create(self, ledger: Ledger) -> None:
        """Copy the user's key into the machine folder; the host itself is not touched."""
        target = Path(self.store_dir) / KEY_COPY
        source = Path(self.config["ssh_key"]).expanduser()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle, open(source, "rb") as original:
            shutil.copyfileobj(original, handle)

    def initial_host_key(self) -> str | None:
        return self.config.get("ssh_host_key") or None

    def remove(self) -> None:
        """Nothing to do: the host is the user's, and the store folder goes with the machine."""

    def ip(self) -> str:
        return str(self.config["ip_address"])

    def ssh_details(self) -> SSHDetails:
        return SSHDetails(
            host=self.ip(),
            port=int(self.config.get("ssh_port") or 22),
            user=str(self.config.get("ssh_user") or "root"),
            key_path=str(Path(self.store_dir) / KEY_COPY),
        )

    def state(self) -> State:
        """Running when the SSH port accepts connections, Stopped when it refuses; unreachable is an error."""
        address = (self.ip(), int(self.config.get("ssh_port") or 22))
        try:
            with socket.create_connection(address, timeout=PROBE_TIMEOUT):
                return State.RUNNING
        except ConnectionRefusedError:
            return State.STOPPED
        except TimeoutError:
            raise DriverError(f"no answer from {address[0]}:{address[1]} within {PROBE_TIMEOUT:g}s") from None
        except OSError as error:
            raise DriverError(f"cannot reach {address[0]}:{address[1]}: {error.strerror or error}") from None

    def _not_ours(self, what: str) -> DriverError:
        return DriverError(f"the generic driver cannot {what} a host it does not manage; {what} it yourself")

    def start(self) -> None:
        raise self._not_ours("start")

    def stop(self) -> None:
        raise self._not_ours("stop")

    def restart(self) -> None:
        raise self._not_ours("restart")

    def kill(self) -> None:
        raise self._not_ours("kill")
