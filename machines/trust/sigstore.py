"""``machines trust sign`` / ``verify``: cosign-format signatures in the image's own repository.

The attachment is written by the runtime's ``signing.attach_signature`` (the same code signs on ``docker push``),
with the key's signature made by ``cryptography`` here. Registry access is the runtime's own client: plain HTTP only for loopback
registries, HTTPS with the system CAs plus ``~/.docker/certs.d/<host>/``, Basic or Bearer auth with the
credentials ``docker login`` stored in ``~/.docker/config.json``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from machines.errors import TrustError
from machines.runtime.errors import EngineError
from machines.runtime.images import ecdsa, registry, signing, trust
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


def sign(image: str, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    """Sign ``image`` in its registry; returns (digest signed, signature tag)."""
    ref = parse_image(image)
    with registry_errors():
        sess = session(ref, "pull,push")
        digest = manifest_digest(sess)
        identity = f"{ref.domain}/{ref.path}" + (f":{ref.tag}" if ref.tag else "")
        tag = signing.attach_signature(sess, identity, digest,
                                       lambda payload: key.sign(payload, ec.ECDSA(hashes.SHA256())))
    return digest, tag


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
