"""Cloud-init user data shared by the cloud drivers: our host key and authorized key, plus the user's own part.

A cloud driver generates the host's SSH key itself and hands it to cloud-init, so the core's very first SSH
connection is already verified against a pinned key. Errors name the flag the caller passes in (``--aws-userdata``,
``--azure-custom-data``...), so each driver's messages stay in its own words.
"""

from __future__ import annotations

import email.mime.multipart
import email.mime.text
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm

from machines.errors import PreCreateError


def generate_host_key() -> tuple[str, str]:
    """A fresh ed25519 key pair as (OpenSSH private key PEM, ``ssh-ed25519 AAAA...``)."""
    from cryptography.hazmat.primitives import serialization  # only create pays for cryptography's import
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


def public_key_of(private_key_path: str, flag: str = "SSH key") -> str:
    """The OpenSSH public line of a private key file (its ``.pub`` may be missing or stale).

    Takes OpenSSH keys of every type and PEM ones (PKCS#1 ``RSA PRIVATE KEY`` as EC2 hands out, PKCS#8, SEC1); a file
    that is no unencrypted private key is a one-line ``PreCreateError`` naming ``flag``.
    """
    from cryptography.hazmat.primitives import serialization

    try:
        with open(private_key_path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise PreCreateError(f"{flag} {private_key_path}: {error.strerror}") from None
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key: Any = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    except TypeError:  # cryptography's word for "it needs a password"
        raise PreCreateError(f"{flag} {private_key_path}: the key is encrypted; give a key without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PreCreateError(f"{flag} {private_key_path}: not a private key in OpenSSH or PEM format") from None
    return str(public.decode())


def _yaml_block(text: str, indent: int) -> str:
    pad = " " * indent
    return "\n".join(pad + line for line in text.strip().splitlines())


def cloud_config(authorized_key: str, host_private: str, host_public: str, ssh_user: str) -> str:
    """Our cloud-config: the machine's authorized key and the host key we generated (so SSH is verified at once).

    Written by hand instead of with a YAML library: the structure is fixed and the values are base64 key text.
    """
    lines = [
        "#cloud-config",
        "ssh_deletekeys: true",
        "ssh_genkeytypes: []",
        "ssh_keys:",
        "  ed25519_private: |",
        _yaml_block(host_private, 4),
        f"  ed25519_public: {host_public}",
        "ssh_authorized_keys:",
        f"  - {authorized_key}",
    ]
    if ssh_user == "root":
        lines.append("disable_root: false")
    return "\n".join(lines) + "\n"


def read_user_data(path: str, flag: str) -> str:
    """The user's own user data file; an unreadable one is a one-line error naming ``flag``."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise PreCreateError(f"{flag} {path}: {error.strerror if isinstance(error, OSError) else error}") from None


def user_part(theirs: str, flag: str) -> email.mime.text.MIMEText:
    """The user's own user data as a MIME part for cloud-init: a script, else a cloud-config.

    Called before anything is made too, so data that cannot be merged is refused up front.
    """
    first_line = theirs.lstrip().splitlines()[0] if theirs.strip() else ""
    if first_line.startswith("Content-Type: multipart"):
        raise PreCreateError(f"{flag}: MIME multipart data cannot be merged; pass a script or cloud-config")
    return email.mime.text.MIMEText(theirs, "x-shellscript" if first_line.startswith("#!") else "cloud-config")


def merge_user_data(ours: str, theirs: str | None, flag: str) -> str:
    """Ours alone, or a MIME multipart with ours first and the user's part after it, as cloud-init expects."""
    if not theirs:
        return ours
    message = email.mime.multipart.MIMEMultipart()
    message.attach(email.mime.text.MIMEText(ours, "cloud-config"))
    message.attach(user_part(theirs, flag))
    return message.as_string()
