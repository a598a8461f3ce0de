"""Media types and digests of the image formats (Docker schema 2, OCI): a leaf every images module may import.

Nothing here imports another ``runtime.images`` module, so the store, the registry client, the builder and the
image service above them share these names without importing each other.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
LAYER_MEDIA = {"none": MEDIA_OCI_LAYER, "gzip": MEDIA_OCI_LAYER_GZIP, "zstd": MEDIA_OCI_LAYER_ZSTD}
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_id(parent: str | None, diff_id: str) -> str:
    """image-spec ChainID: ChainID(L0) = DiffID(L0); ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(n))."""
    return diff_id if parent is None else sha256_bytes((parent + " " + diff_id).encode())


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    out: list[str] = []
    for d in diff_ids:
        out.append(chain_id(out[-1] if out else None, d))
    return out


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def host_platform() -> dict[str, str]:
    """The host as an OCI platform (``architecture``, ``os``, ``variant`` when it matters)."""
    machine = os.uname().machine.lower()  # platform.machine(), without importing platform at start
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386",
            "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine)
    if arch is not None:
        return {"os": "linux", "architecture": arch}
    if machine.startswith("armv"):
        return {"os": "linux", "architecture": "arm", "variant": "v" + machine[4]}
    return {"os": "linux", "architecture": machine}
