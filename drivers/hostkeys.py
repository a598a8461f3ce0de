"""SSH public keys as machines pins them: ``"<type> <base64>"`` lines, read from what users give or already trust.

In the drivers' layer so that a driver can learn a host's key before the first connection (``initial_host_key``)
and the SSH connection (``machines.ssh``) can pin it in the same form.
"""

from __future__ import annotations

import base64
import os

import paramiko


def key_line(key: paramiko.PKey) -> str:
    """A host key as ``"<type> <base64>"``, the form pinned in config.json."""
    return f"{key.get_name()} {key.get_base64()}"


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
