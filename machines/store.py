"""The machine store on disk: one folder per machine, written atomically and under a lock.

Layout (root is ``--storage-path`` / ``MACHINES_STORAGE_PATH``, default ``~/.machines``)::

    <root>/.lock                      flock'd by every writer, so concurrent commands serialise their writes
    <root>/certs/                     store-wide CA and client certificate (bootstrap fills it)
    <root>/machines/<name>/config.json
    <root>/machines/<name>/id_ed25519(.pub)

Every file is written to a temporary name, fsync'd and renamed over the old one with mode 0600, so a reader never
sees half a file and a crash never leaves one. A folder without a readable ``config.json`` is a leftover of a crash
between ``mkdir`` and the first write: listing skips it and the next create of that name reclaims it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from machines.errors import InvalidNameError, MachineExistsError, MachineNotFoundError, StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: the driver's discovered state (``driver_state``) apart from the user's flags (``driver``)
CONFIG_FILE = "config.json"
KEY_FILE = "id_ed25519"
NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9.-]*")  # always fullmatch: "$" would let "name\n" by

STATE_CREATING = "creating"
STATE_READY = "ready"
STATE_FAILED = "failed"  # a create whose rollback itself failed: kept so ``rm`` can finish the cleanup


def default_storage_path() -> Path:
    """``MACHINES_STORAGE_PATH`` if set, else ``~/.machines``."""
    configured = os.environ.get("MACHINES_STORAGE_PATH")
    return Path(configured).expanduser() if configured else Path.home() / ".machines"


def validate_name(name: str) -> str:
    """Refuse names that are unsafe as folder names and host names, before anything is made."""
    if not NAME_PATTERN.fullmatch(name or "") or len(name) > 63:
        raise InvalidNameError(
            f"invalid machine name {name!r}: use letters, digits, dots and dashes, starting with a letter or digit "
            "(at most 63 characters)"
        )
    return name


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _written_beside(path, data, mode) as put_in_place:
        put_in_place()
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _written_beside(path: Path, data: bytes, mode: int) -> Iterator[Callable[[], None]]:
    """``data`` in a temporary file beside ``path``, on disk; the function yielded renames it over ``path``.

    Split so that a writer holding a lock holds it for the rename only, not for the write and its fsync (a
    temporary file left unrenamed is removed).
    """
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        yield lambda: os.replace(temp_name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: without this a power cut can forget the new directory entry."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_ssh_key(directory: Path, comment: str) -> str:
    """Make the machine's own ed25519 key pair in ``directory``; returns the public key line."""
    from cryptography.hazmat.primitives import serialization  # only create pays for cryptography's import
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = f"{public.decode()} {comment}"
    atomic_write(directory / KEY_FILE, private)
    atomic_write(directory / f"{KEY_FILE}.pub", (public_line + "\n").encode(), mode=0o644)
    return public_line


def new_record(
    name: str, driver_name: str, driver_config: dict[str, Any], host_options: dict[str, Any]
) -> dict[str, Any]:
    """The ``config.json`` of a machine whose create has just begun (``host_options``: ``HostOptions.to_record()``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "driver_name": driver_name,
        "driver": driver_config,
        "driver_state": {},
        "host_options": host_options,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "state": STATE_CREATING,
        "ledger": [],
        "ssh_host_key": None,
        "runtime": {},
    }


class Store:
    """The folder of machines. Safe to use from several threads and processes at once."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_storage_path()
        self.machines_dir = self.root / "machines"
        self.certs_dir = self.root / "certs"

    # -- locking ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store-wide write lock (an flock, released by the kernel even if the process dies)."""
        self._ensure_root()
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _ensure_root(self) -> None:
        for directory in (self.root, self.machines_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- paths and names ----------------------------------------------------------------------------------
    def machine_dir(self, name: str) -> Path:
        return self.machines_dir / validate_name(name)

    def exists(self, name: str) -> bool:
        return (self.machine_dir(name) / CONFIG_FILE).is_file()

    def names(self) -> list[str]:
        """Names of complete entries, sorted; half-made folders (no readable config.json) are skipped."""
        if not self.machines_dir.is_dir():
            return []
        names = []
        for entry in sorted(self.machines_dir.iterdir()):
            if not NAME_PATTERN.fullmatch(entry.name) or not (entry / CONFIG_FILE).is_file():
                log.debug("skipping %s: not a complete machine entry", entry)
                continue
            names.append(entry.name)
        return names

    # -- records ------------------------------------------------------------------------------------------
    def load(self, name: str) -> dict[str, Any]:
        path = self.machine_dir(name) / CONFIG_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise MachineNotFoundError(f"machine {name!r} does not exist") from None
        try:
            record = json.loads(raw)
        except ValueError as error:
            raise StoreError(f"{path} is not valid JSON ({error}); fix or remove it") from None
        version = record.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {version!r}, this machines understands up to {SCHEMA_VERSION}: upgrade"
            )
        return _migrate(record)

    def save(self, name: str, record: dict[str, Any]) -> None:
        """Replace the record of an existing machine; refuses to resurrect a machine removed meanwhile.

        The store's lock is held for the check and the rename only: parallel creates save about ten times each,
        and each write's fsync under the lock made them wait for one another.
        """
        directory = self.machine_dir(name)
        removed = MachineNotFoundError(f"machine {name!r} was removed while this command ran")
        try:
            with _written_beside(directory / CONFIG_FILE, _encode(record), 0o600) as put_in_place, self.lock():
                if not directory.is_dir():
                    raise removed
                put_in_place()
        except FileNotFoundError:  # the folder went before the temporary file could be made
            raise removed from None
        _fsync_dir(directory)

    def reserve(self, record: dict[str, Any]) -> Path:
        """Claim a name for a create: make its folder and first record in one locked step."""
        name = record["name"]
        with self.lock():
            directory = self.machine_dir(name)
            if (directory / CONFIG_FILE).is_file():
                raise MachineExistsError(f"machine {name!r} already exists")
            if directory.exists():
                log.debug("reclaiming half-made folder %s", directory)
                shutil.rmtree(directory)
            directory.mkdir(mode=0o700)
            atomic_write(directory / CONFIG_FILE, _encode(record))
        return directory

    def delete(self, name: str) -> None:
        """Forget a machine: its folder goes entirely. Deleting a missing machine is not an error."""
        with self.lock():
            directory = self.machine_dir(name)
            if directory.exists():
                # Rename first so a concurrent reader sees the entry whole or not at all.
                trash = directory.with_name(f".{name}.removing.{os.getpid()}")
                os.rename(directory, trash)
                shutil.rmtree(trash, ignore_errors=True)


def _migrate(record: dict[str, Any]) -> dict[str, Any]:
    """Bring a record written by an older version up to ``SCHEMA_VERSION`` (on disk at its next save)."""
    if record["schema_version"] < 2:
        # Version 1 kept what a driver found out among the user's flags: building the driver separates them again
        # (``Driver.__init__``: keys that are no flag of the driver are its discovered state).
        record.setdefault("driver_state", {})
        options = record.setdefault("host_options", {})
        options.setdefault("api", (record.get("runtime") or {}).get("api") or "tls")  # the oldest kept it there only
    record["schema_version"] = SCHEMA_VERSION
    return record


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
