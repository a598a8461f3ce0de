"""One exception root for everything the library raises on purpose, and the exit statuses the CLI maps them to.

The CLI catches ``MachinesError`` in one place, prints ``str(error)`` as a single line and exits with
``error.exit_status``. Anything else escaping is a bug.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Process exit statuses, one per kind of failure a script may want to tell apart."""

    OK = 0
    ERROR = 1
    USAGE = 2
    PRE_CREATE = 3
    NOT_FOUND = 4
    TIMEOUT = 5
    INTERRUPTED = 130


class MachinesError(Exception):
    """Root of every error the library raises deliberately; its message is one line meant for a user."""

    exit_status: ExitStatus = ExitStatus.ERROR


class UsageError(MachinesError):
    """The user asked for something malformed: a bad name, an unknown flag value, a missing argument."""

    exit_status = ExitStatus.USAGE


class InvalidNameError(UsageError):
    """A machine name that does not match ``^[a-zA-Z0-9][a-zA-Z0-9.-]*$``."""


class MachineNotFoundError(MachinesError):
    """No machine of that name in the store."""

    exit_status = ExitStatus.NOT_FOUND


class MachineExistsError(MachinesError):
    """A create asked for a name the store already holds."""


class DriverNotFoundError(UsageError):
    """No installed driver answers to that name."""


class DriverError(MachinesError):
    """A driver could not do what was asked (cloud API error, missing tool, wrong state)."""


class PreCreateError(DriverError):
    """A driver refused a create before making anything: bad flags, missing credentials, no root."""

    exit_status = ExitStatus.PRE_CREATE


class StateError(MachinesError):
    """The machine is not in a state where the command makes sense (e.g. ``ssh`` to a stopped machine)."""


class SwarmError(MachinesError):
    """A Swarm mode operation failed or was refused (the engine is not Docker Engine, quorum would be lost...)."""


class MachineTimeoutError(MachinesError):
    """A wait ran out; the message says what was awaited and the last error seen."""

    exit_status = ExitStatus.TIMEOUT


class SSHError(MachinesError):
    """SSH could not connect, authenticate or run a command."""


class HostKeyMismatchError(SSHError):
    """The host presented a different key than the one pinned at create: refused, never accepted silently."""


class StoreError(MachinesError):
    """The store on disk is unreadable, locked for too long, or from a newer schema."""


class ProvisionError(MachinesError):
    """Installing or starting the runtime on a host failed; the message names the phase and the cause."""


class CertificateError(MachinesError):
    """Certificates are missing, expired or do not match the machine."""


class CancelledError(MachinesError):
    """The user pressed Ctrl-C; whatever a create had made was rolled back."""

    exit_status = ExitStatus.INTERRUPTED
