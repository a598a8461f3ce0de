"""GPG simple signing on the workstation, in the format ``skopeo copy --sign-by`` writes and reads.

Like skopeo, ``sign`` stores the signature through the registry's signature extension when the registry advertises
it, else as the next free ``signature-N`` under a ``file://`` lookaside folder (where a registries.d
``lookaside-staging`` would point); ``verify`` reads the extension, else ``file://`` or ``http(s)://`` lookasides,
with the runtime's own reader and ``gpg`` checks, so the workstation accepts exactly what a machine's ``signedBy``
policy does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

from machines import __version__
from machines.errors import TrustError
from machines.runtime.images import sigext, simplesign, trust
from machines.trust import sigstore


def _lookaside_folder(lookaside: str) -> Path:
    if lookaside.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(lookaside).path))
    if "://" in lookaside:
        raise TrustError(f"signatures can only be written to a local lookaside folder, not {lookaside}")
    return Path(lookaside)


def sign(image: str, fingerprint: str, lookaside: str | None, passphrase_file: Path | None = None) -> str:
    """Sign the manifest ``image`` names with the GPG key ``fingerprint``; returns where the signature went: the
    registry's signature extension when it advertises one (as skopeo), else the next free file in ``lookaside``."""
    gpg = shutil.which("gpg")
    if gpg is None:
        raise TrustError("GPG signing needs gpg (apt-get install gnupg)")
    ref = sigstore.parse_image(image)
    with sigstore.registry_errors():
        pulling = sigstore.session(ref, "pull")
        digest = sigstore.manifest_digest(pulling)
        in_registry = sigext.supported(pulling)
    if not in_registry and lookaside is None:
        raise TrustError(f"{ref.domain} does not support the signature extension ({sigext.HEADER}): give "
                         "--lookaside DIR")
    identity = f"{ref.domain}/{ref.path}" + (f":{ref.tag}" if ref.tag else "")
    payload = trust.signing_payload(identity, digest, trust.ATOMIC_TYPE)
    payload["optional"] = {"creator": f"machines {__version__}", "timestamp": int(time.time())}
    command = [gpg, "--batch", "--sign", "--local-user", fingerprint, "--output", "-"]
    if passphrase_file is not None:
        command[1:1] = ["--pinentry-mode", "loopback", "--passphrase-file", str(passphrase_file)]
    result = subprocess.run(command, input=json.dumps(payload).encode(), capture_output=True, timeout=120)
    if result.returncode != 0 or not result.stdout:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise TrustError(f"gpg could not sign with {fingerprint}: {detail[-1] if detail else 'failed'}")
    if in_registry:
        with sigstore.registry_errors():
            return sigext.store(sigstore.session(ref, "pull,push"), digest, result.stdout)
    assert lookaside is not None
    base = _lookaside_folder(lookaside).resolve().as_uri()
    for url in simplesign.signature_urls(base, ref, digest):
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(result.stdout)
        return str(path)
    raise TrustError(f"{ref.familiar()} already has {simplesign.MAX_SIGNATURES} signatures in {lookaside}")


def verify(image: str, key: bytes, lookaside: str | None) -> str:
    """The verified ``repo@digest``; TrustError with the one-line reason otherwise (identity: the repository).
    Signatures are read where containers/image reads them: the registry's extension, else ``lookaside``."""
    ref = sigstore.parse_image(image)
    base = lookaside if lookaside is None or "://" in lookaside else Path(lookaside).resolve().as_uri()
    rule = {"type": "signedBy", "signedIdentity": {"type": "matchRepository"}}
    with sigstore.registry_errors():
        sess = sigstore.session(ref, "pull")
        digest = sigstore.manifest_digest(sess)
        try:
            found = sigext.simple_signatures(sess, digest, base)
        except sigext.ExtensionError as exc:
            raise TrustError(f"{ref.familiar()}: {exc}") from None
        if found is None:
            raise TrustError(f"{ref.domain} does not support the signature extension ({sigext.HEADER}): give "
                             "--lookaside DIR|URL")
        reason = simplesign.verify_signed_by(
            [key], found, lambda payload: trust.check_payload(payload, trust.ATOMIC_TYPE, digest, rule, ref))
    if reason:
        raise TrustError(f"{ref.familiar()}: {reason}")
    return f"{ref.domain}/{ref.path}@{digest}"
