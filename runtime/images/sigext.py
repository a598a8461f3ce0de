"""The registry signature extension: GPG simple signatures stored by the registry itself, as OpenShift's registry
serves them and containers/image (skopeo, podman) reads and writes them.

A registry that answers ``GET /v2/`` with ``X-Registry-Supports-Signatures: 1`` keeps the signatures of a manifest
at ``/extensions/v2/<repository>/signatures/<digest>``: ``GET`` lists them as ``{"signatures": [{"schemaVersion": 2,
"name": "<digest>@<name>", "type": "atomic", "content": "<base64>"}]}`` and ``PUT`` of one such object adds one
(201). As in containers/image, such a registry's signatures are read from the extension only, a lookaside is used for
registries that do not advertise it, and a signature list is read up to 4 MiB; entries of another schema version or
type are not signatures. The list is registry input, so a malformed one is refused whole (as Go's decoder refuses
it) and one longer than ``simplesign.MAX_SIGNATURES`` is refused rather than cut short.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Iterable

from machines.runtime.errors import InvalidParameter
from machines.runtime.images import registry, simplesign

HEADER = "X-Registry-Supports-Signatures"
SCHEMA_VERSION = 2
TYPE_ATOMIC = "atomic"
MAX_LIST = 4 << 20  # containers/image's iolimits.MaxSignatureListBodySize


class ExtensionError(InvalidParameter):
    """The registry's signature extension answered with an error or with something that is no signature list."""


def supported(session: registry.Session) -> bool:
    """Whether the registry advertises the extension on its ``/v2/`` answer (200 or 401, as containers/image)."""
    resp = session.ping()
    try:
        resp.read(64 << 10)
        return resp.status in (200, 401) and resp.header(HEADER).strip() == "1"
    finally:
        resp.close()


def path(session: registry.Session, digest: str) -> str:
    return f"/extensions/v2/{session.ref.path}/signatures/{digest}"


def _entries(session: registry.Session, digest: str) -> list[tuple[str, bytes]]:
    """(name, signature bytes) of every atomic schema-2 entry the registry lists for ``digest``."""
    where = f"{session.ref.domain}/{session.ref.path}"
    resp = session.request("GET", path(session, digest), {"Accept": "application/json"})
    try:
        body = resp.read(MAX_LIST + 1)
    finally:
        resp.close()
    if resp.status != 200:
        detail = registry._registry_error(body, f"HTTP {resp.status}")
        raise ExtensionError(f"downloading signatures for {digest} in {where}: {detail}")
    if len(body) > MAX_LIST:
        raise ExtensionError(f"downloading signatures for {digest} in {where}: exceeded maximum allowed size of "
                             f"{MAX_LIST} bytes")
    try:
        listed = json.loads(body)["signatures"]
        if not isinstance(listed, list) or not all(isinstance(entry, dict) for entry in listed):
            raise TypeError("signatures is not a list of objects")
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ExtensionError(f"decoding signature list for {digest} in {where}: not a signature list") from None
    found = []
    for entry in listed:
        if entry.get("schemaVersion") == SCHEMA_VERSION and entry.get("type") == TYPE_ATOMIC:
            try:
                found.append((str(entry.get("name")), base64.b64decode(entry["content"], validate=True)))
            except (KeyError, TypeError, ValueError, binascii.Error):
                raise ExtensionError(f"decoding signature list for {digest} in {where}: illegal base64 data "
                                     f"in {str(entry.get('name'))[:100]!r}") from None
    return found


def signatures(session: registry.Session, digest: str) -> list[bytes]:
    """The signatures the registry keeps for the manifest ``digest``; ExtensionError when the list is unusable."""
    found = _entries(session, digest)
    if len(found) > simplesign.MAX_SIGNATURES:
        raise ExtensionError(f"the registry lists {len(found)} signatures for {digest}, more than the "
                             f"{simplesign.MAX_SIGNATURES} that are checked")
    return [content for _, content in found]


def simple_signatures(session: registry.Session, digest: str, lookaside: str | None) -> Iterable[bytes] | None:
    """Where containers/image reads GPG simple signatures: the extension when the registry advertises it, else the
    lookaside URL; None when there is neither."""
    if supported(session):
        return signatures(session, digest)
    return simplesign.lookaside_signatures(lookaside, session.ref, digest) if lookaside else None


def store(session: registry.Session, digest: str, signature: bytes) -> str:
    """Add ``signature`` for ``digest`` (a push session; nothing is added when the very bytes are already there, as
    containers/image does); returns the URL of the signature list."""
    found = _entries(session, digest)
    url = session.base + path(session, digest)
    if any(content == signature for _, content in found):
        return url
    if len(found) >= simplesign.MAX_SIGNATURES:
        raise ExtensionError(f"{session.ref.familiar()} already has {len(found)} signatures in the registry")
    names = {name for name, _ in found}
    name = f"{digest}@{secrets.token_hex(16)}"
    while name in names:  # the API leaves naming to the client: 128 random bits, as containers/image
        name = f"{digest}@{secrets.token_hex(16)}"
    body = json.dumps({"schemaVersion": SCHEMA_VERSION, "name": name, "type": TYPE_ATOMIC,
                       "content": base64.b64encode(signature).decode()}).encode()
    resp = session.request("PUT", path(session, digest), {"Content-Type": "application/json"}, body)
    try:
        answer = resp.read(64 << 10)
    finally:
        resp.close()
    if resp.status != 201:
        detail = registry._registry_error(answer, f"HTTP {resp.status}")
        raise ExtensionError(f"uploading signature to {path(session, digest)} in {session.host}: {detail}")
    return url
