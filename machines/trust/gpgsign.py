"""GPG simple signing on the workstation, in the format ``skopeo copy --sign-by`` writes and reads.

Like skopeo, ``sign`` stores the signature through the registry's signature extension when the registry advertises
it, else as the next free ``signature-N`` under a ``file://`` lookaside folder (where a registries.d
``lookaside-staging`` would point); ``verify`` reads the extension, else ``file://`` or ``http(s)://`` lookasides,
with the runtime's own reader and ``gpg`` checks, so the workstation accepts exactly what a machine's ``signedBy``
policy does.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.parse
from pathlib import Path

from machines import __version__
from machines.errors import TrustError
from machines.runtime.images import sigext, signing, simplesign, trust
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
    ref = sigstore.parse_image(image)
    with sigstore.registry_errors():
        pulling = sigstore.session(ref, "pull")
        digest = sigstore.manifest_digest(pulling)
        in_registry = sigext.supported(pulling)
        if not in_registry and lookaside is None:
            raise TrustError(f"{ref.domain} does not support the signature extension ({sigext.HEADER}): give "
                             "--lookaside DIR")
        identity = f"{ref.domain}/{ref.path}" + (f":{ref.tag}" if ref.tag else "")
        signature = simplesign.gpg_sign(signing.atomic_payload(identity, digest, f"machines {__version__}"),
                                        fingerprint, passphrase_file=str(passphrase_file) if passphrase_file else None)
        if in_registry:
            return sigext.store(sigstore.session(ref, "pull,push"), digest, signature)
        assert lookaside is not None
        return simplesign.write_signature(str(_lookaside_folder(lookaside)), ref, digest, signature)


def export_secret_key(user_id: str, passphrase: bytes) -> tuple[str, bytes]:
    """(fingerprint, armored secret key) of the signing key ``user_id`` names in the user's keyring, for a signing
    policy to install on a host; TrustError with gpg's last line otherwise."""
    gpg = shutil.which("gpg")
    if gpg is None:
        raise TrustError("GPG simple signing needs gpg (apt-get install gnupg)")
    listed = subprocess.run([gpg, "--batch", "--with-colons", "--list-secret-keys", "--", user_id],
                            capture_output=True, text=True, timeout=60)
    fingerprints = [line.split(":")[9] for line in listed.stdout.splitlines() if line.startswith("fpr:")]
    if listed.returncode != 0 or not fingerprints:
        raise TrustError(f"no GPG secret key {user_id!r} in your keyring")
    fingerprint = fingerprints[0]  # the primary key's: it is what skopeo's --sign-by names
    exported = subprocess.run([gpg, "--batch", "--pinentry-mode", "loopback", "--passphrase-fd", "0", "--armor",
                               "--export-secret-keys", fingerprint], input=passphrase + b"\n", capture_output=True,
                              timeout=60)
    if exported.returncode != 0 or b"PRIVATE KEY BLOCK" not in exported.stdout:
        detail = exported.stderr.decode(errors="replace").strip().splitlines()
        raise TrustError(f"gpg could not export {user_id}: {detail[-1] if detail else 'failed'}")
    return fingerprint, exported.stdout


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
