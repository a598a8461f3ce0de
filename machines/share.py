"""Moving a machine entry between workstations: ``machines export NAME -o FILE`` / ``machines import FILE``.

The file holds the machine's record and the files of its folder (SSH keys, TLS client and server certificates),
as a tar encrypted with a passphrase: Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) under a key derived
with scrypt (n=2**15, r=8, p=1) from the passphrase and a random salt. A wrong passphrase or a changed byte fails
the HMAC: nothing is written. The import checks every member (plain files of an allow-listed shape, no path) before
it writes, and refuses a name the store already holds.

What is left on this computer stays: the export is a copy. A ``local`` machine is refused (it runs on this computer,
its host's state is not something another workstation can take). A TLS machine's runtime trusts the exporting
store's CA: the imported entry brings that CA and a client certificate, so docker reaches it as before;
``machines provision`` from the importing store would switch the runtime to that store's CA (see README).
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from machines.errors import MachineExistsError, StateError, UsageError
from machines.store import CONFIG_FILE, atomic_write, validate_name

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

    from machines.machine import Machine, Machines

MAGIC = b"machines-export-v1\n"
SALT_SIZE = 16
SCRYPT = {"n": 2**15, "r": 8, "p": 1}
# What of a machine folder moves: its record, keys and certificates; never live state (sockets, pids, logs).
MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LEFT_BEHIND = {"forwarder.json", "forwarder.log", "known_hosts", "docker.sock"}
MAX_MEMBER = 1 << 20


def _fernet(passphrase: str, salt: bytes) -> Fernet:
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    if not passphrase:
        raise UsageError("an empty passphrase would not protect the machine's keys")
    key = Scrypt(salt=salt, length=32, **SCRYPT).derive(passphrase.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def _files(machine: Machine) -> dict[str, bytes]:
    files = {}
    for path in sorted(machine.dir.iterdir()):
        if path.is_symlink() or not path.is_file() or path.name in LEFT_BEHIND or not MEMBER.fullmatch(path.name):
            continue
        if path.suffix in (".log", ".tmp", ".sock") or path.name.startswith("."):
            continue
        files[path.name] = path.read_bytes()
    return files


def export(machine: Machine, passphrase: str) -> bytes:
    """The encrypted export of ``machine``."""
    if machine.driver_name == "local":
        raise StateError(f"{machine.name} is a local machine: it runs on this computer and cannot move to another")
    if not machine.record.get("ssh_host_key"):
        raise StateError(f"{machine.name} has no recorded host key (its create did not finish): nothing to export")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, data in _files(machine).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    salt = os.urandom(SALT_SIZE)
    return MAGIC + salt + _fernet(passphrase, salt).encrypt(archive.getvalue())


def _decrypt(data: bytes, passphrase: str) -> dict[str, bytes]:
    from cryptography.fernet import InvalidToken

    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + SALT_SIZE:
        raise UsageError("not a machines export file")
    salt, token = data[len(MAGIC):len(MAGIC) + SALT_SIZE], data[len(MAGIC) + SALT_SIZE:]
    try:
        plain = _fernet(passphrase, salt).decrypt(token)
    except InvalidToken:
        raise UsageError("cannot decrypt the export: wrong passphrase, or the file was changed") from None
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not MEMBER.fullmatch(member.name) or member.size > MAX_MEMBER:
                raise UsageError(f"refusing the export: unexpected member {member.name!r}")
            handle = tar.extractfile(member)
            assert handle is not None
            files[member.name] = handle.read()
    if CONFIG_FILE not in files:
        raise UsageError("refusing the export: it holds no machine record")
    return files


def import_(machines: Machines, data: bytes, passphrase: str, name: str | None = None) -> Machine:
    """Write the exported machine into ``machines``' store (as ``name`` when given); returns it."""
    files = _decrypt(data, passphrase)
    try:
        record = json.loads(files.pop(CONFIG_FILE))
        original = str(record["name"])
    except (ValueError, KeyError, TypeError):
        raise UsageError("refusing the export: its machine record is not readable") from None
    if record.get("driver_name") == "local":
        raise UsageError("refusing the export: a local machine cannot move between computers")
    record["name"] = validate_name(name or original)
    record["imported"] = True  # its TLS files are its own (the exporting store's CA) until provisioned from here
    if machines.store.exists(record["name"]):
        raise MachineExistsError(f"machine {record['name']!r} already exists")
    folder = machines.store.reserve(record)
    try:
        for file_name, content in files.items():
            atomic_write(folder / file_name, content, mode=0o644 if file_name.endswith(".pub") else 0o600)
    except BaseException:
        machines.store.delete(record["name"])
        raise
    return machines.get(record["name"])


def read_passphrase(path: Path | None, *, confirm: bool) -> str:
    """The passphrase from ``--passphrase-file`` (its first line), else asked twice on the terminal."""
    if path is not None:
        try:
            return path.read_text().splitlines()[0] if path.read_text() else ""
        except OSError as error:
            raise UsageError(f"cannot read the passphrase file {path}: {error.strerror}") from None
    import getpass

    first = getpass.getpass("Passphrase: ")
    if confirm and getpass.getpass("Passphrase (again): ") != first:
        raise UsageError("the passphrases differ")
    return first


USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
VALIDITY = re.compile(r"^(\d{1,5})([hdw])$")


def check_shareable(machines: Machines, machine: Machine) -> None:
    """Refuse to share a certificate some machine could never be made to refuse: the store CA signs for all its TLS
    machines, and Docker Engine (dockerd) has no option to check a revocation list (our runtime's ``--tlscrl``)."""
    if machine.runtime.get("api") != "tls":
        raise UsageError(f"machine {machine.name!r} has no TLS API (created with --api ssh): there is nothing to share")
    if on_docker_engine(machine):
        raise StateError(f"machine {machine.name!r} runs Docker Engine, which cannot check a revocation list: a shared "
                         "certificate could never be revoked (share works with machines of the machines runtime)")
    # Imported machines trust the CA they came with (Docker Machine's, another store's), not this store's.
    docker = sorted(other.name for other in machines.list() if on_docker_engine(other) and other.runtime.get("api")
                    == "tls" and not other.runtime.get("imported_from") and not other.record.get("imported"))
    if docker:
        raise StateError(f"cannot share {machine.name!r}: the store CA's certificate would also open {', '.join(docker)}"
                         ", on Docker Engine, which cannot check a revocation list (it could never be revoked there)")


def on_docker_engine(machine: Machine) -> bool:
    """Whether ``machine`` runs Docker Engine (``--engine docker``, or adopted from Docker Machine), whose dockerd
    cannot check a revocation list."""
    return machine.runtime.get("engine") == "docker"


def validate_user(user: str) -> str:
    """A name for a shared certificate's subject (and its folder): letters, digits and ``._@-``."""
    if not USER.fullmatch(user):
        raise UsageError(f"invalid user {user!r}: letters, digits and . _ @ - (at most 64)")
    return user


def parse_validity(text: str) -> datetime.timedelta:
    """``30d``, ``12h`` or ``2w`` (at most ten years)."""
    match = VALIDITY.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"invalid --expires {text!r}: a number of hours, days or weeks, e.g. 30d, 12h, 2w")
    units = {"h": "hours", "d": "days", "w": "weeks"}
    validity = datetime.timedelta(**{units[match.group(2)]: int(match.group(1))})
    if validity > datetime.timedelta(days=3650):
        raise UsageError(f"invalid --expires {text!r}: at most ten years")
    return validity
