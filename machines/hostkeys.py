"""SSH host keys as machines pins them: key lines, fingerprints as OpenSSH prints them, and the keys a user's
known_hosts or a ``.pub`` file holds. A leaf module, so drivers can pin a key without the connection machinery."""

from __future__ import annotations

import base64
import hashlib
import os

import paramiko


def key_line(key: paramiko.PKey) -> str:
    """A host key as ``"<type> <base64>"``, the form pinned in config.json."""
    return f"{key.get_name()} {key.get_base64()}"


def sha256_fingerprint(line: str) -> str:
    """``"<type> SHA256:<base64 digest>"`` of a key line (the line itself when it holds no key)."""
    parts = line.split()
    try:
        digest = hashlib.sha256(base64.b64decode(parts[1])).digest()
    except (IndexError, ValueError):
        return line
    return f"{parts[0]} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


OPENSSH_KEY_NAMES = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA", "ssh-dss": "DSA"}


def fingerprint(line: str) -> str:
    """A key line's fingerprint as OpenSSH shows it on first contact: ``ED25519 key fingerprint is SHA256:...``."""
    key_type, _, digest = sha256_fingerprint(line).partition(" ")
    shown = OPENSSH_KEY_NAMES.get(key_type) or ("ECDSA" if key_type.startswith("ecdsa-") else key_type.upper())
    return f"{shown} key fingerprint is {digest}"


def parse_public_key(text: str) -> str | None:
    """The first SSH public key in ``text`` as ``"<type> <base64>"``: a ``.pub`` line, a known_hosts line (markers
    such as ``@revoked`` excluded) or ``ssh-keyscan`` output; None when there is none."""
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith(("#", "@")):
            continue
        for key_type, data in zip(fields, fields[1:], strict=False):
            try:
                key = paramiko.PKey.from_type_string(key_type, base64.b64decode(data, validate=True))
            except (paramiko.SSHException, ValueError):
                continue
            return key_line(key)
    return None


def known_host_key(path: str | os.PathLike[str], host: str, port: int) -> str | None:
    """The key a known_hosts file holds for ``host`` (``[host]:port`` when the port is not 22; hashed names too)."""
    try:
        known = paramiko.HostKeys(str(path))
    except (OSError, paramiko.SSHException, ValueError):
        return None
    keys = known.lookup(host if port == 22 else f"[{host}]:{port}")
    return key_line(next(iter(keys.values()))) if keys else None
