"""Signing images on push: cosign signature attachments, written by ``machines trust sign`` and by ``docker push``.

A signature is the simple-signing payload for the manifest digest and the pushed reference, signed with ECDSA P-256
/ SHA-256, stored as cosign stores it: an OCI manifest tagged ``sha256-<hex>.sig`` in the image's own repository,
whose layers are the payloads (``application/vnd.dev.cosign.simplesigning.v1+json``) each annotated with its base64
signature; a new signature is added to the layers already there. ``attach_signature`` writes it for any signer (the
workstation's ``cryptography`` key, or the runtime's own ``ecdsa.sign``).

The signing policy (``machines create/set --engine-signing-policy``) is ``<data root>/signing.json``, read afresh on
every push, in the shape of a containers-registries.d file: ``docker`` maps scopes (``HOST``, ``HOST/NAMESPACE``,
``HOST/REPO``, ``*.DOMAIN``; the most specific wins) to an entry, ``default-docker`` is the entry for the rest. An
entry names its signers with podman push's flags: ``"sign-by-sigstore-private-key": "NAME.key"`` signs with the
unencrypted PKCS#8 key ``<data root>/signing/NAME.key``; ``"sign-by": FINGERPRINT`` with
``"lookaside-staging": "file:///DIR"`` makes a GPG simple signature with the exported secret key
``signing/FINGERPRINT.asc`` (its passphrase in ``signing/FINGERPRINT.pass``) in a throw-away keyring and stores it
as skopeo does: in the registry's signature extension when the registry advertises one (``sigext``), else under
DIR. Key files are root's, 0600. ``{}`` signs nothing in its scope. Without the file nothing
is signed, as in Docker.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import stat
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any, Callable

from machines.runtime import VERSION
from machines.runtime.errors import EngineError, HostError, InvalidParameter
from machines.runtime.images import ecdsa, registry, sigext, simplesign, trust
from machines.runtime.images.media import MEDIA_OCI_CONFIG, MEDIA_OCI_MANIFEST, sha256_bytes
from machines.runtime.images.reference import Reference

SIGNING_FILE = "signing.json"
KEYS_DIR = "signing"
SIGSTORE_KEY = "sign-by-sigstore-private-key"
GPG_KEY = "sign-by"
STAGING = "lookaside-staging"
KEY_NAME = re.compile(r"[0-9a-f]{16}\.key")
FINGERPRINT = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")
MAX_POLICY = 1 << 20
MAX_KEY = 64 << 10

Signer = Callable[[bytes], bytes]  # payload -> DER ECDSA signature
SessionFor = Callable[[Reference], registry.Session]  # a pull,push session on a pushed reference's repository
# (progress status, store(session_for, pushed reference, digest) -> what was stored): one per signer of an entry
Action = tuple[str, Callable[[SessionFor, Reference, str], str]]


class SigningPolicyError(InvalidParameter):
    """The signing policy or its key is unusable: pushes in its scope fail until it is fixed."""


def parse_policy(raw: bytes) -> dict[str, Any]:
    """The validated policy document; SigningPolicyError naming the problem (never a key's bytes) otherwise."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise SigningPolicyError("invalid signing policy: not JSON") from None
    if not isinstance(doc, dict) or set(doc) - {"docker", "default-docker"}:
        raise SigningPolicyError('invalid signing policy: only "docker" and "default-docker" are allowed at the top')
    scopes = doc.get("docker") or {}
    if not isinstance(scopes, dict):
        raise SigningPolicyError('invalid signing policy: "docker" must map scopes to entries')
    for where, entry in [("default-docker", doc.get("default-docker") or {}), *scopes.items()]:
        if not isinstance(entry, dict) or set(entry) - {SIGSTORE_KEY, GPG_KEY, STAGING}:
            raise SigningPolicyError(f"invalid signing policy: {where}: an entry may only hold {SIGSTORE_KEY}, "
                                     f"{GPG_KEY} and {STAGING}")
        name = entry.get(SIGSTORE_KEY)
        if name is not None and not (isinstance(name, str) and KEY_NAME.fullmatch(name)):
            raise SigningPolicyError(f"invalid signing policy: {where}: {SIGSTORE_KEY} must name an installed key")
        fingerprint, staging = entry.get(GPG_KEY), entry.get(STAGING)
        if fingerprint is not None and not (isinstance(fingerprint, str) and FINGERPRINT.fullmatch(fingerprint)):
            raise SigningPolicyError(f"invalid signing policy: {where}: {GPG_KEY} must be a full key fingerprint")
        if (fingerprint is None) != (staging is None) or (
                staging is not None and not (isinstance(staging, str) and staging.startswith("file:///"))):
            raise SigningPolicyError(f"invalid signing policy: {where}: {GPG_KEY} needs {STAGING} "
                                     "file:///FOLDER (and only goes with it)")
    return doc


def entry_for(policy: dict[str, Any], ref: Reference) -> dict[str, str]:
    """The entry for pushes to ``ref``'s repository (the most specific scope decides; {}: not signed)."""
    scopes = policy.get("docker") or {}
    entry = next((scopes[scope] for scope in trust.scopes(Reference(ref.domain, ref.path)) if scope in scopes),
                 policy.get("default-docker") or {})
    return {key: value for key, value in entry.items() if value is not None}  # null: the key is not set


def atomic_payload(identity: str, digest: str, creator: str) -> bytes:
    """The simple-signing payload GPG signs (type ``atomic container signature``), with skopeo's optional fields."""
    payload = trust.signing_payload(identity, digest, trust.ATOMIC_TYPE)
    payload["optional"] = {"creator": creator, "timestamp": int(time.time())}
    return json.dumps(payload).encode()


def _put_blob(sess: registry.Session, data: bytes) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        digest = sha256_bytes(data)
        registry._upload(sess, f.name, digest, len(data), lambda _n: None)
    return {"digest": digest, "size": len(data)}


def _existing_layers(sess: registry.Session, tag: str) -> list[dict[str, Any]]:
    status, body = trust.session_fetch(sess)(f"/v2/{sess.ref.path}/manifests/{tag}", MEDIA_OCI_MANIFEST)
    if status != 200:
        return []
    try:
        layers = json.loads(body).get("layers") or []
    except (ValueError, AttributeError):
        return []
    return [x for x in layers if isinstance(x, dict) and x.get("mediaType") == trust.SIMPLESIGNING_MEDIA]


def attach_signature(sess: registry.Session, identity: str, digest: str, sign: Signer) -> str:
    """Sign ``digest`` as ``identity`` and store it in the session's repository; returns the signature tag.

    HostError when the registry refuses to store it (its own words)."""
    payload = json.dumps(trust.signing_payload(identity, digest), separators=(",", ":")).encode()
    signature = base64.b64encode(sign(payload)).decode()
    tag = trust.signature_tag(digest)
    layers = _existing_layers(sess, tag)
    layer = dict(mediaType=trust.SIMPLESIGNING_MEDIA, **_put_blob(sess, payload),
                 annotations={trust.COSIGN_SIGNATURE_ANNOTATION: signature})
    layers = [existing for existing in layers if existing != layer] + [layer]
    config = json.dumps({"architecture": "", "os": "", "config": {}, "created": "0001-01-01T00:00:00Z",
                         "history": [{"created": "0001-01-01T00:00:00Z"}],
                         "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in layers]}},
                        separators=(",", ":")).encode()
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
                "config": dict(mediaType=MEDIA_OCI_CONFIG, **_put_blob(sess, config)), "layers": layers}
    resp = sess.request("PUT", f"/v2/{sess.ref.path}/manifests/{tag}", {"Content-Type": MEDIA_OCI_MANIFEST},
                        json.dumps(manifest, separators=(",", ":")).encode())
    body = resp.read()
    resp.close()
    if resp.status not in (201, 202):
        raise HostError(f"storing the signature: {registry._registry_error(body, f'HTTP {resp.status}')}")
    return tag


class Signing:
    """The data root's signing policy and keys; one per image service."""

    def __init__(self, data_root: str) -> None:
        self.path = os.path.join(data_root, SIGNING_FILE)
        self.keys_dir = os.path.join(data_root, KEYS_DIR)

    def actions(self, ref: Reference) -> list[Action]:
        """What signs pushes to ``ref``'s repository ([]: nothing); SigningPolicyError if the policy or a key is
        unusable, so a push fails before it starts."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_POLICY + 1)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SigningPolicyError(f"signing policy: {exc.strerror}") from None
        entry = entry_for(parse_policy(raw), ref)
        actions: list[Action] = []
        if SIGSTORE_KEY in entry:
            try:
                secret = ecdsa.load_private_key(self._key_file(entry[SIGSTORE_KEY]))
            except ecdsa.KeyError_ as exc:
                raise SigningPolicyError(f"signing key {entry[SIGSTORE_KEY]}: {exc}") from None

            def sigstore(session_for: SessionFor, pushed: Reference, digest: str) -> str:
                sign = functools.partial(ecdsa.sign, secret)
                return f"Signature stored as tag {attach_signature(session_for(pushed), str(pushed), digest, sign)}"

            actions.append(("Signing manifest using a sigstore signature", sigstore))
        if GPG_KEY in entry:
            fingerprint, folder = entry[GPG_KEY], urllib.parse.unquote(entry[STAGING][len("file://"):])
            exported = self._key_file(f"{fingerprint}.asc")
            self._key_file(f"{fingerprint}.pass")  # checked like the key: root's, 0600

            def simple(session_for: SessionFor, pushed: Reference, digest: str) -> str:
                signature = simplesign.gpg_sign(
                    atomic_payload(str(pushed), digest, f"machines-runtime {VERSION}"), fingerprint,
                    secret_key=exported, passphrase_file=os.path.join(self.keys_dir, f"{fingerprint}.pass"))
                session = session_for(pushed)
                if sigext.supported(session):  # where containers/image puts it: the registry, else the staging
                    return f"Signature stored in {sigext.store(session, digest, signature)}"
                return f"Signature stored as {simplesign.write_signature(folder, pushed, digest, signature)}"

            actions.append(("Signing manifest using simple signing", simple))
        return actions

    def _key_file(self, name: str) -> bytes:
        """A key file's bytes, refused unless it is a regular file only the daemon's user can read."""
        try:
            fd = os.open(os.path.join(self.keys_dir, name), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077 or info.st_uid != os.geteuid():
                    raise SigningPolicyError(f"signing key {name} must be a file only the daemon's user can read "
                                             "(0600)")
                return f.read(MAX_KEY)
        except OSError as exc:
            raise SigningPolicyError(f"signing key {name}: {exc.strerror}; install it again with machines set "
                                     "--engine-signing-policy") from None

    def signed_push(self, base: Reference, stream: Iterator[dict], session_for: SessionFor) -> Iterator[dict]:
        """The push's messages, each pushed tag in scope followed by its signature (containers/image's words).

        An unusable policy or key stops the push before anything is sent; a signature the registry will not store
        fails after the push, the error naming what was pushed and that it is not signed."""
        try:
            actions = self.actions(base)
        except SigningPolicyError as exc:
            raise SigningPolicyError(f"{base.familiar_name}: nothing was pushed: creating signature: {exc}") from None
        for message in stream:
            yield message
            aux = message.get("aux")
            if not isinstance(aux, dict) or not aux.get("Digest"):
                continue
            ref = Reference(base.domain, base.path, aux.get("Tag"))
            for status, store in actions:
                yield {"status": status}
                try:
                    stored = store(session_for, ref, aux["Digest"])
                except EngineError as exc:
                    raise HostError(f"{ref.familiar()}: pushed as {aux['Digest']}, but not signed: writing "
                                    f"signatures: {exc}") from None
                yield {"status": stored}
