"""Image trust policy: the containers-policy.json format (containers/image), enforced on pull and on run.

The policy lives at ``<data root>/policy.json`` (``machines create --engine-trust-policy`` installs it) and is read
afresh for every pull, so replacing the file changes the next pull. Without the file everything is accepted, as in
Docker. Requirements: ``insecureAcceptAnything``, ``reject``, ``sigstoreSigned`` (``keyPath``/``keyPaths``/
``keyData``, cosign's signature attachment ``sha256-<hex>.sig`` in the same repository, ECDSA P-256 verified by
``runtime.images.ecdsa``) and ``signedBy`` (GPG simple signing from the registry's signature extension or a
registries.d lookaside, verified by the host's ``gpg``; see ``runtime.images.simplesign`` and ``sigext``). Scopes
are looked up like containers/image's ``docker`` transport: the full reference, the repository, each parent
namespace, the registry host, ``*.domain`` wildcards, the transport's ``""``, then ``default``. Images that did
not come from a registry (built, loaded, imported, committed) are judged by the ``docker-daemon`` transport's ``""``
scope (else ``default``): the policy entry for local images.

Whether a pulled image passed is remembered per ``repo@digest`` together with the policy's digest, so
``docker run`` refuses an image pulled before (or without) the current policy instead of trusting it blindly.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
from typing import Any, Callable

from machines.runtime.errors import EngineError, Forbidden, InvalidParameter
from machines.runtime.images import ecdsa, registry, sigext, simplesign
from machines.runtime.images.media import MEDIA_OCI_MANIFEST, sha256_bytes
from machines.runtime.images.reference import Reference, parse

POLICY_FILE = "policy.json"
LOCAL_TRANSPORT = "docker-daemon"
SIMPLESIGNING_MEDIA = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"
ATOMIC_TYPE = "atomic container signature"
REQUIREMENT_TYPES = ("insecureAcceptAnything", "reject", "sigstoreSigned", "signedBy")
IDENTITY_TYPES = ("matchExact", "matchRepoDigestOrExact", "matchRepository", "exactReference", "exactRepository")
MAX_SIGNATURES = 32
MAX_PAYLOAD = 64 << 10
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")

# fetch(path, accept) -> (status, body): a GET on the image's own repository (the registry session's auth).
Fetch = Callable[[str, str], tuple[int, bytes]]


def session_fetch(session: registry.Session) -> Fetch:
    """GETs on the repository of a registry session (its credentials and token), bodies capped in size."""
    def fetch(path: str, accept: str) -> tuple[int, bytes]:
        resp = session.request("GET", path, {"Accept": accept})
        try:
            return resp.status, resp.read(registry.MAX_MANIFEST + 1)
        finally:
            resp.close()

    return fetch


class Rejected(Forbidden):
    """The policy refuses the image; the message names the image and the reason, as containers/image words it."""

    def __init__(self, image: str, reason: str) -> None:
        super().__init__(f"{image}: Source image rejected: {reason}")


class PolicyError(InvalidParameter):
    """The policy file itself is unusable: every pull fails closed until it is fixed."""


def signing_payload(reference: str, digest: str, kind: str = COSIGN_TYPE) -> dict:
    """The simple-signing payload that names ``reference`` and the manifest ``digest``."""
    return {"critical": {"identity": {"docker-reference": reference}, "image": {"docker-manifest-digest": digest},
                         "type": kind}, "optional": None}


def signature_tag(digest: str) -> str:
    """cosign's attachment tag: ``sha256:abc`` -> ``sha256-abc.sig``."""
    return digest.replace(":", "-") + ".sig"


class Policy:
    """A parsed, validated policy; ``digest`` identifies its exact bytes (for the pulled-and-verified marks)."""

    def __init__(self, raw: bytes, base_dir: str = "/") -> None:
        self.digest = sha256_bytes(raw)
        self.base_dir = base_dir
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise PolicyError("invalid trust policy: not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("default"), list):
            raise PolicyError('invalid trust policy: "default" must be a list of requirements')
        self.default = self._requirements(doc["default"], "default")
        self.transports: dict[str, dict[str, list[dict]]] = {}
        for transport, scopes in (doc.get("transports") or {}).items():
            if not isinstance(scopes, dict):
                raise PolicyError(f"invalid trust policy: transport {transport!r} must map scopes to requirements")
            self.transports[transport] = {scope: self._requirements(reqs, f"{transport} {scope!r}")
                                          for scope, reqs in scopes.items()}

    def _requirements(self, reqs: Any, where: str) -> list[dict]:
        if not isinstance(reqs, list) or not reqs:
            raise PolicyError(f"invalid trust policy: {where}: a non-empty list of requirements is needed")
        for req in reqs:
            kind = req.get("type") if isinstance(req, dict) else None
            if kind not in REQUIREMENT_TYPES:
                raise PolicyError(f"invalid trust policy: {where}: unknown requirement type {kind!r}")
            if kind in ("sigstoreSigned", "signedBy"):
                if kind == "signedBy" and req.get("keyType", "GPGKeys") != "GPGKeys":
                    raise PolicyError(f"invalid trust policy: {where}: keyType {req.get('keyType')!r} is not supported")
                if kind == "sigstoreSigned" and any(k in req for k in ("fulcio", "rekorPublicKeyPath",
                                                                        "rekorPublicKeyData")):
                    raise PolicyError(f"invalid trust policy: {where}: only key-based sigstoreSigned is supported")
                if sum(k in req for k in ("keyPath", "keyPaths", "keyData")) != 1:
                    raise PolicyError(f"invalid trust policy: {where}: {kind} needs exactly one of keyPath, "
                                      "keyPaths or keyData")
                identity = req.get("signedIdentity") or {"type": "matchRepoDigestOrExact"}
                if not isinstance(identity, dict) or identity.get("type") not in IDENTITY_TYPES:
                    raise PolicyError(f"invalid trust policy: {where}: unsupported signedIdentity {identity!r}")
                if kind == "sigstoreSigned":
                    for pem in self.key_blobs(req):
                        try:
                            ecdsa.load_public_key(pem)
                        except ecdsa.KeyError_ as exc:
                            raise PolicyError(f"invalid trust policy: {where}: {exc}") from None
        return reqs

    def key_blobs(self, req: dict) -> list[bytes]:
        """The key material a requirement names: files (relative to the policy's folder) or inline base64."""
        if "keyData" in req:
            try:
                return [base64.b64decode(req["keyData"], validate=True)]
            except (binascii.Error, TypeError, ValueError):
                raise PolicyError("invalid trust policy: keyData is not base64") from None
        paths = req["keyPaths"] if "keyPaths" in req else [req["keyPath"]]
        blobs = []
        for path in paths:
            try:
                with open(os.path.join(self.base_dir, str(path)), "rb") as f:
                    blobs.append(f.read())
            except OSError as exc:
                raise PolicyError(f"invalid trust policy: cannot read key {path}: {exc.strerror}") from None
        return blobs

    def requirements_for(self, ref: Reference) -> list[dict]:
        """The most specific scope's requirements for a registry image (containers/image's docker transport)."""
        by_scope = self.transports.get("docker") or {}
        for scope in scopes(ref):
            if scope in by_scope:
                return by_scope[scope]
        return by_scope.get("") or self.default

    def local_requirements(self) -> list[dict]:
        return (self.transports.get(LOCAL_TRANSPORT) or {}).get("") or self.default


def scopes(ref: Reference) -> list[str]:
    """The policy scopes of ``ref``, most specific first (containers/image's docker transport)."""
    repo = f"{ref.domain}/{ref.path}"
    out = [repo + "@" + ref.digest] if ref.digest else []
    if ref.tag:
        out.append(repo + ":" + ref.tag)
    name = repo
    while "/" in name:
        out.append(name)
        name = name.rsplit("/", 1)[0]
    out.append(name)
    host = ref.domain.split(":")[0].split(".")
    out.extend("*." + ".".join(host[i:]) for i in range(1, len(host)))
    return out


def identity_matches(rule: dict, wanted: Reference, signed: str) -> bool:
    """containers/image's signedIdentity semantics for the identity a signature claims."""
    try:
        claimed = parse(signed, default_tag=False)
    except EngineError:
        return False
    same_repo = (claimed.domain, claimed.path) == (wanted.domain, wanted.path)
    kind = rule.get("type", "matchRepoDigestOrExact")
    if kind == "matchRepository":
        return same_repo
    if kind == "matchExact":
        return same_repo and wanted.tag is not None and (claimed.tag, claimed.digest) == (wanted.tag, wanted.digest)
    if kind == "matchRepoDigestOrExact":
        if wanted.digest:
            return same_repo
        return same_repo and claimed.tag == wanted.tag and claimed.digest is None
    try:
        fixed = parse(rule.get("dockerReference") or rule.get("dockerRepository") or "", default_tag=False)
    except EngineError:
        return False
    if kind == "exactReference":
        return str(claimed) == str(fixed)
    return (claimed.domain, claimed.path) == (fixed.domain, fixed.path)  # exactRepository


def check_payload(payload: bytes, kind: str, digest: str, rule: dict, wanted: Reference) -> str | None:
    """None when the simple-signing payload names this manifest and an accepted identity, else the reason."""
    try:
        doc = json.loads(payload)
        critical = doc["critical"]
        signed_type = critical["type"]
        signed_digest = critical["image"]["docker-manifest-digest"]
        signed_ref = critical["identity"]["docker-reference"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return "invalid signature payload"
    if signed_type != kind:
        return f"unrecognized signature type {signed_type!r}"
    if signed_digest != digest:
        return f"Signature for digest {signed_digest} does not match"
    if not identity_matches(rule.get("signedIdentity") or {}, wanted, str(signed_ref)):
        return f'Signature for identity "{signed_ref}" is not accepted'
    return None


def sigstore_signatures(fetch: Fetch, repo_path: str, digest: str) -> list[tuple[bytes, bytes]]:
    """(payload, DER signature) of each layer in the cosign attachment; [] when there is none."""
    status, body = fetch(f"/v2/{repo_path}/manifests/{signature_tag(digest)}", MEDIA_OCI_MANIFEST)
    if status == 404:
        return []
    if status != 200:
        raise InvalidParameter(f"reading signatures: HTTP {status}")
    try:
        layers = json.loads(body).get("layers") or []
        if not isinstance(layers, list):
            raise ValueError
    except (ValueError, AttributeError, RecursionError):
        raise InvalidParameter("reading signatures: invalid signature manifest") from None
    found = []
    for layer in layers[:MAX_SIGNATURES]:
        try:
            if layer.get("mediaType") != SIMPLESIGNING_MEDIA or int(layer.get("size") or 0) > MAX_PAYLOAD:
                continue
            encoded = layer["annotations"][COSIGN_SIGNATURE_ANNOTATION]
            blob_digest = layer["digest"]
            if not isinstance(blob_digest, str) or not DIGEST_RE.fullmatch(blob_digest):
                continue
            status, payload = fetch(f"/v2/{repo_path}/blobs/{blob_digest}", "*/*")
            if status != 200 or sha256_bytes(payload) != blob_digest:
                continue  # a missing or altered payload proves nothing; the other signatures may still
            found.append((payload, base64.b64decode(encoded, validate=True)))
        except (AttributeError, KeyError, TypeError, ValueError, binascii.Error):
            continue  # a malformed entry is no signature
    return found


def verify_sigstore(policy: Policy, req: dict, fetch: Fetch, ref: Reference, digest: str) -> str | None:
    """None when one attached signature verifies with a policy key and names this image, else the reason."""
    signatures = sigstore_signatures(fetch, ref.path, digest)
    if not signatures:
        return "A signature was required, but no signature exists"
    keys = [ecdsa.load_public_key(pem) for pem in policy.key_blobs(req)]
    reason = "cryptographic signature verification failed: invalid signature"
    for payload, signature in signatures:
        if not any(ecdsa.verify(key, signature, payload) for key in keys):
            continue
        problem = check_payload(payload, COSIGN_TYPE, digest, req, ref)
        if problem is None:
            return None
        reason = problem
    return reason


def verify_signed_by(policy: Policy, req: dict, session: registry.Session, digest: str, folders: list) -> str | None:
    """None when a GPG simple signature (from the registry's signature extension, else the lookaside) verifies with
    the policy's keys and names this image; else the reason."""
    ref = session.ref
    try:
        found = sigext.simple_signatures(session, digest, simplesign.lookaside_url(ref, folders))
    except sigext.ExtensionError as exc:
        return str(exc)
    return simplesign.verify_signed_by(policy.key_blobs(req), found or [],
                                       lambda payload: check_payload(payload, ATOMIC_TYPE, digest, req, ref))


class Trust:
    """The data root's policy and its marks; one per image service."""

    def __init__(self, data_root: str) -> None:
        self.path = os.path.join(data_root, POLICY_FILE)
        self.marks_path = os.path.join(data_root, "trust", "verified.json")
        self.registries_d = [os.path.join(data_root, "registries.d"), simplesign.ETC_REGISTRIES_D]
        self._lock = threading.Lock()

    def policy(self) -> Policy | None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PolicyError(f"invalid trust policy: {exc.strerror}") from None
        return Policy(raw, os.path.dirname(self.path))

    def check_pull(self, session: registry.Session, digest: str) -> None:
        """Raise Rejected unless every requirement for the session's image accepts the manifest ``digest``; mark
        it if so."""
        policy = self.policy()
        if policy is None:
            return
        ref, fetch = session.ref, session_fetch(session)
        shown = ref.familiar()
        for req in policy.requirements_for(ref):
            kind = req["type"]
            if kind == "reject":
                raise Rejected(shown, f"Running image docker://{ref} is rejected by policy.")
            if kind == "sigstoreSigned":
                reason = verify_sigstore(policy, req, fetch, ref, digest)
            elif kind == "signedBy":
                reason = verify_signed_by(policy, req, session, digest, self.registries_d)
            else:
                reason = None
            if reason:
                raise Rejected(shown, reason)
        self._mark(f"{ref.domain}/{ref.path}@{digest}", policy.digest)

    def check_run(self, name: str, repo_digests: list[str]) -> None:
        """Refuse to run an image the current policy has not accepted: local images by the local entry, pulled
        ones by their scope (signature requirements need a mark made by a pull under this very policy)."""
        policy = self.policy()
        if policy is None:
            return
        if not repo_digests:
            for req in policy.local_requirements():
                if req["type"] != "insecureAcceptAnything":
                    raise Rejected(name, f"the trust policy's {LOCAL_TRANSPORT} entry does not accept local images")
            return
        marks = self._marks()
        reason = ""
        for text in repo_digests:
            ref = parse(text, default_tag=False)
            kinds = {req["type"] for req in policy.requirements_for(ref)}
            if "reject" in kinds:
                reason = f"Running image docker://{ref} is rejected by policy."
            elif kinds == {"insecureAcceptAnything"} or marks.get(f"{ref.domain}/{ref.path}@{ref.digest}") == \
                    policy.digest:
                return
            else:
                reason = "it was not verified under the current trust policy; pull it again"
        raise Rejected(name, reason)

    def _marks(self) -> dict:
        try:
            with open(self.marks_path) as f:
                marks = json.load(f)
            return marks if isinstance(marks, dict) else {}
        except (OSError, ValueError):
            return {}

    def _mark(self, key: str, policy_digest: str) -> None:
        with self._lock:
            marks = self._marks()
            marks[key] = policy_digest
            os.makedirs(os.path.dirname(self.marks_path), mode=0o700, exist_ok=True)
            tmp = self.marks_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(marks, f)
            os.replace(tmp, self.marks_path)

