"""``--engine-trust-policy`` and ``--engine-signing-policy``: read on the workstation, made self-contained.

``keyPath``/``keyPaths`` name files on the workstation, which the host does not have: their contents are inlined as
``keyData`` (what containers/image accepts too) before the policy is stored with the machine and installed at
``<data root>/policy.json``. The result is checked with the runtime's own parser, so a policy the runtime would
refuse is refused at create time.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from machines.errors import TrustError, UsageError
from machines.runtime.errors import EngineError
from machines.runtime.images import signing, trust


def load_policy(path: str) -> str:
    """The policy file's JSON with keys inlined; UsageError naming the problem otherwise."""
    source = Path(path).expanduser()
    try:
        doc = json.loads(source.read_text())
    except OSError as exc:
        raise UsageError(f"--engine-trust-policy: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"--engine-trust-policy: {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"--engine-trust-policy: {path} is not a policy object")
    scopes = [doc.get("default")] + [reqs for transport in (doc.get("transports") or {}).values()
                                      if isinstance(transport, dict) for reqs in transport.values()]
    for reqs in scopes:
        for req in reqs if isinstance(reqs, list) else []:
            if isinstance(req, dict) and ("keyPath" in req or "keyPaths" in req):
                paths = req.pop("keyPaths", None) or [req.pop("keyPath")]
                if len(paths) != 1:
                    raise UsageError("--engine-trust-policy: keyPaths with several keys is not supported; "
                                     "use one requirement per key")
                key_file = source.parent / Path(paths[0]).expanduser()
                try:
                    req["keyData"] = base64.b64encode(key_file.read_bytes()).decode()
                except OSError as exc:
                    raise UsageError(f"--engine-trust-policy: cannot read key {key_file}: {exc.strerror}") from None
    text = json.dumps(doc, indent=2) + "\n"
    try:
        trust.Policy(text.encode())
    except EngineError as exc:
        raise UsageError(f"--engine-trust-policy: {exc}") from None
    return text


def load_signing_policy(path: str, passphrase_file: Path | None) -> tuple[str, tuple[tuple[str, bytes], ...]]:
    """``--engine-signing-policy``: (the runtime's signing.json, the decrypted keys it names); UsageError otherwise.

    The file is a containers-registries.d-style document (YAML or JSON): ``docker: {SCOPE: ENTRY}`` and
    ``default-docker: ENTRY``, an entry naming an encrypted sigstore key (``sign-by-sigstore-private-key``,
    relative to the file's folder), a GPG key of the user's keyring (``sign-by`` with ``lookaside-staging``, a
    folder on the host), both, or ``{}`` to sign nothing in that scope. Sigstore keys are decrypted here and named
    by their public key's digest; GPG keys are exported with their passphrase (which goes to the host next to
    them). One passphrase: ``passphrase_file``, ``$COSIGN_PASSWORD`` or a prompt. The recorded policy holds no
    secret.
    """
    import yaml  # here, not at the top: the CLI imports this module for every create
    from cryptography.hazmat.primitives import serialization

    from machines.trust import gpgsign, keys

    source = Path(path).expanduser()
    try:
        doc = yaml.safe_load(source.read_text())
    except OSError as exc:
        raise UsageError(f"--engine-signing-policy: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"--engine-signing-policy: {path} is not YAML or JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"--engine-signing-policy: {path} is not a signing policy object")
    entries = [doc.get("default-docker")] + list((doc.get("docker") or {}).values()
                                                 if isinstance(doc.get("docker"), dict) else [])
    installed: dict[str, bytes] = {}
    passphrase: list[bytes] = []  # asked once, only if a key needs it

    def secret() -> bytes:
        if not passphrase:
            passphrase.append(keys.read_passphrase(passphrase_file, confirm=False))
        return passphrase[0]

    for entry in entries:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get(signing.SIGSTORE_KEY), str):
            key_file = source.parent / Path(entry[signing.SIGSTORE_KEY]).expanduser()
            try:
                key = keys.decrypt_private_key(key_file.read_bytes(), secret())
            except OSError as exc:
                raise UsageError(f"--engine-signing-policy: cannot read key {key_file}: {exc.strerror}") from None
            except TrustError as exc:
                raise UsageError(f"--engine-signing-policy: {key_file}: {exc}") from None
            name = hashlib.sha256(keys.public_pem(key)).hexdigest()[:16] + ".key"
            installed[name] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())
            entry[signing.SIGSTORE_KEY] = name
        if isinstance(entry.get(signing.GPG_KEY), str):
            try:
                fingerprint, exported = gpgsign.export_secret_key(entry[signing.GPG_KEY], secret())
            except TrustError as exc:
                raise UsageError(f"--engine-signing-policy: {exc}") from None
            installed[f"{fingerprint}.asc"], installed[f"{fingerprint}.pass"] = exported, secret()
            entry[signing.GPG_KEY] = fingerprint
    text = json.dumps(doc, indent=2) + "\n"
    try:
        signing.parse_policy(text.encode())
    except EngineError as exc:
        raise UsageError(f"--engine-signing-policy: {exc}") from None
    return text, tuple(sorted(installed.items()))
