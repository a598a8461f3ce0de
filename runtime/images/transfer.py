"""``docker save`` and ``docker load``: image archives in both layouts, over the image store.

A saved archive carries the old ``manifest.json`` (and ``repositories``) and the OCI ``index.json`` with its blobs,
so both old and new loaders read it. A load reads a ``docker save`` archive or an OCI image layout (plain or
compressed), streamed with no seeking; every blob is checked against its digest, layers are unpacked with the
same refusals as pulled ones, and images appear only once all their layers are in the store.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from typing import IO, Callable, Optional

from machines.runtime import clientjson
from machines.runtime.errors import InvalidParameter
from machines.runtime.images import archive, reference
from machines.runtime.images.media import (
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    canonical_json,
    host_platform,
    sha256_bytes,
)
from machines.runtime.images.reference import Reference
from machines.runtime.images.store import Image, ImageStore

ProgressFn = Callable[[dict], None]


def save(store: ImageStore, refs: Sequence[str]) -> Iterator[bytes]:
    """``GET /images/get``: one tar that both old (manifest.json) and new (OCI index.json) loaders read."""
    return _write(store, store.named_images(refs))


def _write(store: ImageStore, entries: list[tuple[Image, list[Reference]]]) -> Iterator[bytes]:
    ts = archive.TarStream()
    written = set()
    yield ts.add_dir("blobs")
    yield ts.add_dir("blobs/sha256")
    manifest_json, index_manifests, repositories = [], [], {}  # type: ignore[var-annotated]
    for image, names in entries:
        layers_desc = []
        for layer in image.layers():
            name = "blobs/sha256/" + layer.diff_id[7:]
            layers_desc.append({"mediaType": MEDIA_OCI_LAYER, "digest": layer.diff_id,
                                "size": layer.meta["tar_size"]})
            if name in written:
                continue
            written.add(name)
            info = tarfile.TarInfo(name)
            info.size, info.mode = layer.meta["tar_size"], 0o644
            with archive.decompressed(layer.blob_path) as src:
                yield from ts.add_stream(info, src)
        config_bytes = store.get_blob(image.id)
        if image.id not in written:
            written.add(image.id)
            yield ts.add_bytes("blobs/sha256/" + image.id[7:], config_bytes)
        manifest = canonical_json({
            "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": image.id, "size": len(config_bytes)},
            "layers": layers_desc})
        manifest_digest = sha256_bytes(manifest)
        if manifest_digest not in written:
            written.add(manifest_digest)
            yield ts.add_bytes("blobs/sha256/" + manifest_digest[7:], manifest)
        manifest_json.append({"Config": "blobs/sha256/" + image.id[7:],
                              "RepoTags": [n.familiar() for n in names] or None,
                              "Layers": ["blobs/sha256/" + d[7:] for d in image.diff_ids]})
        desc = {"mediaType": MEDIA_OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest)}
        for n in names:
            index_manifests.append(dict(desc, annotations={"io.containerd.image.name": str(n),
                                                           "org.opencontainers.image.ref.name": n.tag}))
            if image.diff_ids:
                repositories.setdefault(n.familiar_name, {})[n.tag] = image.diff_ids[-1][7:]
        if not names:
            index_manifests.append(desc)
    yield ts.add_bytes("index.json", canonical_json({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
                                                     "manifests": index_manifests}))
    yield ts.add_bytes("manifest.json", json.dumps(manifest_json).encode())
    yield ts.add_bytes("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
    if repositories:
        yield ts.add_bytes("repositories", json.dumps(repositories).encode())
    yield ts.close()


def load(store: ImageStore, fileobj: IO[bytes], progress: ProgressFn | None = None) -> list[str]:
    """``POST /images/load`` of a ``docker save`` or OCI layout archive (plain or compressed).

    Returns what was loaded: familiar tags, or image IDs for untagged images (``Loaded image ID: ...``).
    """
    with store.workdir() as work, store.pinned() as pins:
        files, digests = _unpack_archive(fileobj, work)
        try:
            if "manifest.json" in files or "index.json" not in files:
                plan = _plan_docker_save(files, work)  # dockerd's words when neither is there: no manifest.json
            else:
                plan = _plan_oci(files, digests, work)
        except (KeyError, TypeError, AttributeError) as exc:  # a field missing or of the wrong type
            raise InvalidParameter(f"invalid manifest: {exc}") from None
        loaded: list[str] = []
        for config_path, layer_paths, tags, layer_digests in plan:
            with open(config_path, "rb") as f:
                config_bytes = f.read()
            diff_ids = _config_diff_ids(config_bytes)
            if len(diff_ids) != len(layer_paths):
                raise InvalidParameter("invalid manifest, layers length mismatch: "
                                       f"expected {len(layer_paths)}, got {len(diff_ids)}")
            parent = None
            for path, diff_id, expected in zip(layer_paths, diff_ids, layer_digests):
                if progress is not None:
                    progress({"status": "Loading layer", "progressDetail": {}, "id": diff_id[7:19]})
                if expected is not None and digests[path] != expected:
                    raise InvalidParameter(f"invalid archive: blob {expected} does not match its digest")
                parent = store.add_layer(path, parent, diff_id=diff_id, blob_digest=digests[path], pins=pins,
                                        blob_verified=True).chain_id
            image = store.register(config_bytes, tags=tags)
            loaded.extend([t.familiar() for t in tags] or [image.id])
        return loaded


def _unpack_archive(fileobj: IO[bytes], work: str) -> tuple[dict[str, str], dict[str, str]]:
    """Save an image archive's regular files as work/<n>: (archive name -> file path, file path -> sha256 digest).

    Archives are streamed (no seeking); symlinks (old ``docker save`` deduplicates layers with them) are resolved
    by name inside the archive only, and anything other than files, dirs and symlinks is refused.
    """
    files: dict[str, str] = {}
    digests: dict[str, str] = {}
    links: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=archive._GuardedTarInfo,
                          bufsize=archive.COPY_CHUNK) as tar:
            for n, m in enumerate(tar):
                name = "/".join(archive._clean_name(m.name, "archive"))
                if m.isdir():
                    continue
                if m.issym():
                    target = os.path.normpath(os.path.join(os.path.dirname(name), m.linkname))
                    links[name] = "/".join(archive._clean_name(target, "archive symlink"))
                    continue
                if not m.isreg():
                    raise archive.LayerRefused(f"invalid archive: unexpected entry {m.name!r}")
                path = os.path.join(work, f"f{n}")
                src = tar.extractfile(m)
                assert src is not None
                digests[path] = archive.copy_hashing(src, path)
                files[name] = path
    except tarfile.ReadError as exc:
        if str(exc) != "empty file":  # Go's archive/tar reads an empty stream as an empty archive
            raise InvalidParameter(_go_tar_error(str(exc))) from None
    except tarfile.TarError as exc:
        raise InvalidParameter(_go_tar_error(str(exc))) from None
    archive.drain(fileobj)
    for name, target in links.items():
        for _ in range(8):
            if target in links:
                target = links[target]
        if target not in files:
            raise InvalidParameter(f"invalid archive: link {name!r} points to a missing file")
        files[name] = files[target]
    return files, digests


def _go_tar_error(message: str) -> str:
    """tarfile's complaint in the words of Go's archive/tar, which dockerd passes on."""
    if message in ("truncated header", "unexpected end of data") or message.startswith("unexpected end"):
        return "unexpected EOF"
    return "archive/tar: invalid tar header"


def _archive_file(files: dict[str, str], name: str, work: str) -> str:
    path = files.get("/".join(archive._clean_name(name, "archive")))
    if path is None:  # dockerd opens the file in the folder it unpacked the archive to
        raise InvalidParameter(f"open {os.path.join(work, name)}: no such file or directory")
    return path


def _read_json(path: str) -> object:
    with open(path, "rb") as f:
        return clientjson.decode(f.read(), "invalid archive")


_DIFF_ID = re.compile(r"sha256:[0-9a-f]{64}")


def _config_diff_ids(config_bytes: bytes) -> list[str]:
    """An uploaded image config's ``rootfs.diff_ids``, refused unless every one is a sha256 digest."""
    config = clientjson.expect_object(clientjson.decode(config_bytes, "invalid archive"), "invalid archive: config")
    rootfs = config.get("rootfs")
    rootfs = {} if rootfs is None else clientjson.expect_object(rootfs, "invalid archive: config rootfs")
    diff_ids = clientjson.expect_strings(rootfs.get("diff_ids"), "invalid archive: config rootfs.diff_ids")
    for diff_id in diff_ids:
        if not _DIFF_ID.fullmatch(diff_id):
            raise InvalidParameter(f"invalid archive: {diff_id!r} is not a layer digest")
    return diff_ids


def _json_kind(value: object) -> str:
    """A JSON value's kind as Go's encoding/json names it in errors."""
    if isinstance(value, bool):
        return "bool"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(type(value), "value")


LoadPlan = list[tuple[str, list[str], list[Reference], list[Optional[str]]]]


def _plan_docker_save(files: dict[str, str], work: str) -> LoadPlan:
    """docker save's manifest.json -> (config file, layer files, tags, expected blob digests)."""
    plan: LoadPlan = []
    entries = _read_json(_archive_file(files, "manifest.json", work))
    if entries is None:
        raise InvalidParameter("invalid manifest, manifest cannot be null (but can be [])")
    if not isinstance(entries, list):
        raise InvalidParameter(f"json: cannot unmarshal {_json_kind(entries)} into Go value of type []tarexport.manifestItem")
    for entry in entries:
        if not isinstance(entry, dict):
            raise InvalidParameter(f"json: cannot unmarshal {_json_kind(entry)} into Go value of type tarexport.manifestItem")
        layers = [_archive_file(files, name, work) for name in entry.get("Layers") or []]
        digests: list[str | None] = []
        for name in entry.get("Layers") or []:
            parts = name.split("/")
            digests.append("sha256:" + parts[2] if len(parts) == 3 and parts[:2] == ["blobs", "sha256"] else None)
        tags = [reference.parse(t) for t in entry.get("RepoTags") or []]
        plan.append((_archive_file(files, entry["Config"], work), layers, tags, digests))
    return plan


def _plan_oci(files: dict[str, str], digests: dict[str, str], work: str) -> LoadPlan:
    """An OCI image layout (index.json, nested indexes allowed) -> load plan for the host's platform."""
    plan: LoadPlan = []
    host = host_platform()

    def blob(digest: str) -> str:
        path = _archive_file(files, "blobs/" + digest.replace(":", "/"), work)
        if digests[path] != digest:
            raise InvalidParameter(f"invalid archive: blob {digest} does not match its digest")
        return path

    def walk(index: dict, name: str | None, depth: int = 0) -> None:
        if depth > 8:  # each level is a blob of its own: a deep chain would only exhaust the stack
            raise InvalidParameter("invalid archive: image indexes nested more than 8 deep")
        for desc in index.get("manifests") or []:
            annotations = desc.get("annotations") or {}
            ref_name = annotations.get("io.containerd.image.name") or name
            short = annotations.get("org.opencontainers.image.ref.name")
            if ref_name is None and short and ("/" in short or ":" in short):
                ref_name = short  # some tools put the whole reference here, Docker only the tag
            plat = desc.get("platform") or {}
            if plat and (plat.get("os"), plat.get("architecture")) != (host["os"], host["architecture"]):
                continue
            media = desc.get("mediaType")
            doc = clientjson.expect_object(_read_json(blob(desc["digest"])), "invalid archive: a manifest")
            if media in (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST) or "manifests" in doc:
                walk(doc, ref_name, depth + 1)
                continue
            layers = [blob(layer["digest"]) for layer in doc.get("layers") or []]
            tags = [reference.parse(ref_name)] if ref_name else []
            plan.append((blob(doc["config"]["digest"]), layers, tags,
                         [layer["digest"] for layer in doc.get("layers") or []]))

    walk(clientjson.expect_object(_read_json(files["index.json"]), "invalid archive: index.json"), None)
    return plan
