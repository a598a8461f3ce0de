"""Client certificates for other people (``machines share``) and taking them back (``machines revoke``).

Instead of handing out the store's CA key or its own client key, ``share`` issues the user a certificate of their
own from the store CA, with its own expiry, and records it in ``<store>/certs/shares.json``. ``revoke`` marks the
user's certificates revoked and writes the store's revocation list (``<store>/certs/crl.pem``, signed by the CA);
provisioning uploads that list to every TLS machine, whose runtime re-reads it when it changes
(``RevocableTLS``), so the next connection with a revoked certificate fails its handshake.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from cryptography import x509

from machines.bootstrap import certs as certificates
from machines.errors import CertificateError
from machines.store import atomic_write

SHARES_FILE = "shares.json"
CRL_FILE = "crl.pem"


def _shares(store: certificates.StoreCerts) -> list[dict[str, Any]]:
    try:
        entries: list[dict[str, Any]] = json.loads((store.dir / SHARES_FILE).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        raise CertificateError(f"cannot read {store.dir / SHARES_FILE}: {error}") from None
    return entries


def _save(store: certificates.StoreCerts, entries: list[dict[str, Any]]) -> None:
    atomic_write(store.dir / SHARES_FILE, json.dumps(entries, indent=2).encode(), mode=0o600)


def share(store_root: Path, machine: str, user: str, validity: datetime.timedelta, folder: Path) -> dict[str, Any]:
    """Issue ``user`` a client certificate valid for ``validity`` into ``folder``; returns its record."""
    store = certificates.ensure_store_certs(store_root)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert = certificates.issue_user_client(store, user, validity, folder)
    entry = {"serial": f"{cert.serial_number:x}", "user": user, "machine": machine,
             "expires": cert.not_valid_after_utc.isoformat(), "revoked": False}
    _save(store, [*_shares(store), entry])
    return entry


def revoke(store_root: Path, machine: str, user: str) -> list[dict[str, Any]]:
    """Revoke every certificate shared with ``user`` for ``machine``; rewrites the revocation list."""
    store = certificates.ensure_store_certs(store_root)
    entries = _shares(store)
    revoked = [entry for entry in entries if entry["user"] == user and entry["machine"] == machine
               and not entry["revoked"]]
    if not revoked:
        raise CertificateError(f"no certificate of {machine} is shared with {user!r}")
    for entry in revoked:
        entry["revoked"] = True
    _save(store, entries)
    _write_crl(store, entries)
    return revoked


def _write_crl(store: certificates.StoreCerts, entries: list[dict[str, Any]]) -> bytes:
    serials = [int(entry["serial"], 16) for entry in entries if entry["revoked"]]
    data = certificates.revocation_list(store, serials)
    atomic_write(store.dir / CRL_FILE, data, mode=0o644)
    return data


def revocation_list(store_root: Path) -> bytes:
    """The store's current revocation list (PEM), made again when missing or signed by a CA since replaced."""
    store = certificates.ensure_store_certs(store_root)
    try:
        crl = x509.load_pem_x509_crl((store.dir / CRL_FILE).read_bytes())
        if crl.is_signature_valid(certificates.load_cert(store.ca_cert).public_key()):  # type: ignore[arg-type]
            return (store.dir / CRL_FILE).read_bytes()
    except (OSError, ValueError):
        pass
    return _write_crl(store, _shares(store))
