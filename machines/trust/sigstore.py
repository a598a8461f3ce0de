"""``machines trust sign`` / ``verify``: cosign-format signatures in the image's own repository.

A signature is the simple-signing payload for the manifest digest, signed with ECDSA P-256 / SHA-256, stored as
cosign stores it: an OCI manifest tagged ``sha256-<hex>.sig`` whose layers are the payloads
(``application/vnd.dev.cosign.simplesigning.v1+json``) each annotated with its base64 signature; a new signature is
added to the layers already there. Registry access is the runtime's own client: plain HTTP only for loopback
registries, HTTPS with the system CAs plus ``~/.docker/certs.d/<host>/``, Basic or Bearer auth with the
credentials ``docker login`` stored in ``~/.docker/config.json``.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from machines.errors import TrustError
from machines.runtime.errors import EngineError
from machines.runtime.images import ecdsa, registry, trust
from machines.runtime.images.media import MEDIA_OCI_CONFIG, MEDIA_OCI_MANIFEST, sha256_bytes
from machines.runtime.images.reference import Reference, parse


def docker_credentials(host: str) -> dict[str, str]:
    """``{"username", "password"}`` for ``host`` from docker's config.json (``auths`` entries); {} if none."""
    folder = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        auths = json.loads((folder / "config.json").read_text()).get("auths") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    entry = registry.auth_for_host(auths, host) if isinstance(auths, dict) else {}
    try:
        user, _, password = base64.b64decode(entry.get("auth") or "").decode().partition(":")
    except (ValueError, AttributeError):
        return {}
    return {"username": user, "password": password} if user else {}


def session(ref: Reference, actions: str) -> registry.Session:
    certs = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "certs.d"
    options = registry.RegistryOptions(certs_dirs=[str(certs), "/etc/docker/certs.d"])
    return registry.Session(ref, docker_credentials(ref.domain), options, actions)


@contextmanager
def registry_errors() -> Iterator[None]:
    """The runtime client's errors as the workstation's one error type, message kept."""
    try:
        yield
    except EngineError as exc:
        raise TrustError(str(exc)) from None


def parse_image(image: str) -> Reference:
    with registry_errors():
        return parse(image, default_tag=False).with_default_tag() if "@" not in image else parse(image)


def manifest_digest(sess: registry.Session) -> str:
    """The digest the reference names (a tag resolved to the manifest or index it points to)."""
    ref = sess.ref
    _, _, _, digest = sess.get_json_blob(f"/v2/{ref.path}/manifests/{ref.digest or ref.tag}",
                                         registry.MANIFEST_ACCEPT, ref.digest)
    return digest


def _put_blob(sess: registry.Session, data: bytes) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        digest = sha256_bytes(data)
        registry._upload(sess, f.name, digest, len(data), lambda _n: None)
    return {"digest": digest, "size": len(data)}


def sign(image: str, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    """Sign ``image`` in its registry; returns (digest signed, signature tag)."""
    ref = parse_image(image)
    with registry_errors():
        sess = session(ref, "pull,push")
        digest = manifest_digest(sess)
        identity = f"{ref.domain}/{ref.path}" + (f":{ref.tag}" if ref.tag else "")
        payload = json.dumps(trust.signing_payload(identity, digest), separators=(",", ":")).encode()
        signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
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
        resp = sess.request("PUT", f"/v2/{ref.path}/manifests/{tag}", {"Content-Type": MEDIA_OCI_MANIFEST},
                            json.dumps(manifest, separators=(",", ":")).encode())
        body = resp.read()
        resp.close()
        if resp.status not in (201, 202):
            raise TrustError(f"storing the signature: {registry._registry_error(body, f'HTTP {resp.status}')}")
    return digest, tag


def _existing_layers(sess: registry.Session, tag: str) -> list[dict[str, Any]]:
    status, body = trust.session_fetch(sess)(f"/v2/{sess.ref.path}/manifests/{tag}", MEDIA_OCI_MANIFEST)
    if status != 200:
        return []
    try:
        layers = json.loads(body).get("layers") or []
    except (ValueError, AttributeError):
        return []
    return [x for x in layers if isinstance(x, dict) and x.get("mediaType") == trust.SIMPLESIGNING_MEDIA]


def verify(image: str, public_key_pem: bytes) -> str:
    """The verified ``repo@digest``; TrustError with the one-line reason otherwise.

    Like ``cosign verify``, the signature must name this manifest's digest and this repository (any tag).
    """
    try:
        ecdsa.load_public_key(public_key_pem)
    except ecdsa.KeyError_ as exc:
        raise TrustError(f"public key: {exc}") from None
    ref = parse_image(image)
    rule = {"type": "sigstoreSigned", "keyData": base64.b64encode(public_key_pem).decode(),
            "signedIdentity": {"type": "matchRepository"}}
    with registry_errors():
        policy = trust.Policy(json.dumps({"default": [rule]}).encode())
        sess = session(ref, "pull")
        digest = manifest_digest(sess)
        reason = trust.verify_sigstore(policy, rule, trust.session_fetch(sess), ref, digest)
    if reason:
        raise TrustError(f"{ref.familiar()}: {reason}")
    return f"{ref.domain}/{ref.path}@{digest}"
