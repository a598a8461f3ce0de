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
from typing import IO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from runtime import clientjson
from runtime.errors import InvalidParameter
from runtime.images import archive, reference
from runtime.images.media import (
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    canonical_json,
    host_platform,
    sha256_bytes,
)
from runtime.images.reference import Reference
from runtime.images.store import Image, ImageStore

ProgressFn = Callable[[dict], None]


def save(store: ImageStore, refs: Sequence[str]) -> Iterator[bytes]:
    """``GET /images/get``: one tar that both old (manifest.json) and new (OCI index.json) loaders read."""
    return _write(store, store.named_images(refs))


def _write(store: ImageStore, entries: List[Tuple[Image, List[Reference]]]) -> Iterator[bytes]:
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


def load(store: ImageStore, fileobj: IO[bytes], progress: Optional[ProgressFn] = None) -> List[str]:
    """``POST /images/load`` of a ``docker save`` or OCI layout archive (plain or compressed).

    Returns what was loaded: familiar tags, or image IDs for untagged images (``Loaded image ID: ...``).
    """
    with store.workdir() as work, store.pinned() as pins:
        files, digests = _unpack_archive(fileobj, work)
        if "manifest.json" in files:
            plan = _plan_docker_save(files)
        elif "index.json" in files:
            plan = _plan_oci(files, digests)
        else:
            raise InvalidParameter("invalid archive: neither manifest.json nor index.json found")
        loaded: List[str] = []
        for config_path, layer_paths, tags, layer_digests in plan:
            with open(config_path, "rb") as f:
                config_bytes = f.read()
            diff_ids = _config_diff_ids(config_bytes)
            if len(diff_ids) != len(layer_paths):
                raise InvalidParameter("invalid archive: %d layers for %d diff IDs"
                                       % (len(layer_paths), len(diff_ids)))
            parent = None
            for path, diff_id, expected in zip(layer_paths, diff_ids, layer_digests):
                if progress is not None:
                    progress({"status": "Loading layer", "progressDetail": {}, "id": diff_id[7:19]})
                if expected is not None and digests[path] != expected:
                    raise InvalidParameter("invalid archive: blob %s does not match its digest" % expected)
                parent = store.add_layer(path, parent, diff_id=diff_id, blob_digest=digests[path], pins=pins,
                                        blob_verified=True).chain_id
            image = store.register(config_bytes, tags=tags)
            loaded.extend([t.familiar() for t in tags] or [image.id])
        return loaded


def _unpack_archive(fileobj: IO[bytes], work: str) -> Tuple[Dict[str, str], Dict[str, str]]:
    """Save an image archive's regular files as work/<n>: (archive name -> file path, file path -> sha256 digest).

    Archives are streamed (no seeking); symlinks (old ``docker save`` deduplicates layers with them) are resolved
    by name inside the archive only, and anything other than files, dirs and symlinks is refused.
    """
    files: Dict[str, str] = {}
    digests: Dict[str, str] = {}
    links: Dict[str, str] = {}
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
                    raise archive.LayerRefused("invalid archive: unexpected entry %r" % m.name)
                path = os.path.join(work, "f%d" % n)
                src = tar.extractfile(m)
                assert src is not None
                digests[path] = archive.copy_hashing(src, path)
                files[name] = path
    except tarfile.TarError as exc:
        raise InvalidParameter("invalid archive: %s" % exc) from None
    archive.drain(fileobj)
    for name, target in links.items():
        for _ in range(8):
            if target in links:
                target = links[target]
        if target not in files:
            raise InvalidParameter("invalid archive: link %r points to a missing file" % name)
        files[name] = files[target]
    return files, digests


def _archive_file(files: Dict[str, str], name: str) -> str:
    path = files.get("/".join(archive._clean_name(name, "archive")))
    if path is None:
        raise InvalidParameter("invalid archive: %s is missing" % name)
    return path


def _read_json(path: str) -> object:
    with open(path, "rb") as f:
        return clientjson.decode(f.read(), "invalid archive")


_DIFF_ID = re.compile(r"sha256:[0-9a-f]{64}")


def _config_diff_ids(config_bytes: bytes) -> List[str]:
    """An uploaded image config's ``rootfs.diff_ids``, refused unless every one is a sha256 digest."""
    config = clientjson.expect_object(clientjson.decode(config_bytes, "invalid archive"), "invalid archive: config")
    rootfs = config.get("rootfs")
    rootfs = {} if rootfs is None else clientjson.expect_object(rootfs, "invalid archive: config rootfs")
    diff_ids = clientjson.expect_strings(rootfs.get("diff_ids"), "invalid archive: config rootfs.diff_ids")
    for diff_id in diff_ids:
        if not _DIFF_ID.fullmatch(diff_id):
            raise InvalidParameter("invalid archive: %r is not a layer digest" % diff_id)
    return diff_ids


LoadPlan = List[Tuple[str, List[str], List[Reference], List[Optional[str]]]]


def _plan_docker_save(files: Dict[str, str]) -> LoadPlan:
    """docker save's manifest.json -> (config file, layer files, tags, expected blob digests)."""
    plan: LoadPlan = []
    entries = _read_json(files["manifest.json"])
    if not isinstance(entries, list):
        raise InvalidParameter("invalid archive: manifest.json is not a list")
    for entry in entries:
        entry = clientjson.expect_object(entry, "invalid archive: a manifest.json entry")
        config = clientjson.expect_string(entry.get("Config"), "invalid archive: manifest.json Config")
        names = clientjson.expect_strings(entry.get("Layers"), "invalid archive: manifest.json Layers")
        layers = [_archive_file(files, name) for name in names]
        digests: List[Optional[str]] = []
        for name in names:
            parts = name.split("/")
            digests.append("sha256:" + parts[2] if len(parts) == 3 and parts[:2] == ["blobs", "sha256"] else None)
        repo_tags = clientjson.expect_strings(entry.get("RepoTags"), "invalid archive: manifest.json RepoTags")
        tags = [reference.parse(t) for t in repo_tags]
        plan.append((_archive_file(files, config), layers, tags, digests))
    return plan


def _plan_oci(files: Dict[str, str], digests: Dict[str, str]) -> LoadPlan:
    """An OCI image layout (index.json, nested indexes allowed) -> load plan for the host's platform."""
    plan: LoadPlan = []
    host = host_platform()

    def blob(digest: object) -> str:
        digest = clientjson.expect_string(digest, "invalid archive: a descriptor's digest")
        if not reference.DIGEST_RE.fullmatch(digest):
            raise InvalidParameter("invalid archive: %r is not a digest" % digest)
        path = _archive_file(files, "blobs/" + digest.replace(":", "/"))
        if digests[path] != digest:
            raise InvalidParameter("invalid archive: blob %s does not match its digest" % digest)
        return path

    def walk(index: dict, name: Optional[str], depth: int = 0) -> None:
        manifests = index.get("manifests") or []
        if not isinstance(manifests, list) or depth > 8:
            raise InvalidParameter("invalid archive: manifests must be an array (nested at most 8 deep)")
        for desc in manifests:
            desc = clientjson.expect_object(desc, "invalid archive: a manifest descriptor")
            annotations = clientjson.expect_object(desc.get("annotations") or {}, "invalid archive: annotations")
            if not all(isinstance(value, str) for value in annotations.values()):
                raise InvalidParameter("invalid archive: annotations must be strings")
            ref_name = annotations.get("io.containerd.image.name") or name
            short = annotations.get("org.opencontainers.image.ref.name")
            if ref_name is None and short and ("/" in short or ":" in short):
                ref_name = short  # some tools put the whole reference here, Docker only the tag
            plat = clientjson.expect_object(desc.get("platform") or {}, "invalid archive: platform")
            if plat and (plat.get("os"), plat.get("architecture")) != (host["os"], host["architecture"]):
                continue
            media = desc.get("mediaType")
            doc = clientjson.expect_object(_read_json(blob(desc.get("digest"))), "invalid archive: a manifest")
            if media in (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST) or "manifests" in doc:
                walk(doc, ref_name, depth + 1)
                continue
            descriptors = doc.get("layers") or []
            if not isinstance(descriptors, list):
                raise InvalidParameter("invalid archive: a manifest's layers must be an array")
            descriptors = [clientjson.expect_object(layer, "invalid archive: a layer descriptor")
                           for layer in descriptors]
            layers = [blob(layer.get("digest")) for layer in descriptors]
            tags = [reference.parse(ref_name)] if ref_name else []
            config = clientjson.expect_object(doc.get("config"), "invalid archive: a manifest's config")
            plan.append((blob(config.get("digest")), layers, tags, [layer["digest"] for layer in descriptors]))

    walk(clientjson.expect_object(_read_json(files["index.json"]), "invalid archive: index.json"), None)
    return plan
