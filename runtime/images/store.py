"""The image store: layers unpacked once (keyed by chain ID), image configs as blobs, tags in one json index.

Layout under ``root``::

    layers/<chain-id hex>/diff         the unpacked layer (overlay lower dir, whiteouts already converted)
    layers/<chain-id hex>/blob         the layer blob as received (plain, gzip or zstd), for save and push
    layers/<chain-id hex>/layer.json   diff ID, parent chain, sizes, blob digest and media type
    blobs/sha256/<hex>                 image configs and manifests (content addressed, OCI layout style)
    index.json                         images (parent, tag times), tags and digests; replaced atomically
    tmp/                               work area; a layer or image appears only once it is complete

Image ID = sha256 of the config JSON bytes, as in Docker. One lock guards the index and layer garbage collection;
layer extraction runs outside it so pulls and loads proceed in parallel.
"""

from __future__ import annotations

import builtins
import copy
import fnmatch
import json
import os
import secrets
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Callable, Union

from machines.runtime import timefmt
from machines.runtime.errors import Conflict, InvalidParameter, NotFound
from machines.runtime.filters import Args
from machines.runtime.images import archive, reference
from machines.runtime.images.dockerfile import apply_changes
from machines.runtime.images.media import LAYER_MEDIA, canonical_json, chain_id, chain_ids, host_platform, sha256_bytes
from machines.runtime.images.reference import Reference
from machines.runtime.linux.paths import private_dir

InUse = Callable[[str], Union[str, bool, None]]

ZERO_TIME = "0001-01-01T00:00:00Z"




def parse_time(text: str | None) -> int:
    """An image's ``created`` as whole unix seconds (0 when absent or unreadable), as the API reports it."""
    return int(timefmt.parse_rfc3339_or(text))


LIST_FILTERS = ("dangling", "label", "label!", "before", "since", "reference", "until")
PRUNE_FILTERS = ("dangling", "label", "label!", "until")


def _reference_match(pattern: str, repo_tag: str) -> bool:
    """moby's ``reference.FamiliarMatch``: Go's ``path.Match`` (``*`` stays inside one path component) against
    the familiar ``name:tag``, then against the name alone."""
    def match(name: str) -> bool:
        return name.count("/") == pattern.count("/") and fnmatch.fnmatchcase(name, pattern)

    return match(repo_tag) or match(repo_tag.rsplit(":", 1)[0])


class Layer:
    """One unpacked layer and its metadata."""

    def __init__(self, path: str, meta: dict) -> None:
        self.path = path
        self.meta = meta

    @property
    def chain_id(self) -> str:
        return self.meta["chain_id"]

    @property
    def diff_id(self) -> str:
        return self.meta["diff_id"]

    @property
    def diff_dir(self) -> str:
        return os.path.join(self.path, "diff")

    @property
    def blob_path(self) -> str:
        return os.path.join(self.path, "blob")

    @property
    def size(self) -> int:
        return int(self.meta.get("size", 0))

    def remote_blobs(self) -> list[dict]:
        """Compressed blobs registries are known to hold for this layer (descriptors seen in pulls)."""
        try:
            with open(os.path.join(self.path, "remote.json")) as f:
                return list(json.load(f))
        except (FileNotFoundError, ValueError):
            return []


class Image:
    """A resolved image: what the engine needs to make a root filesystem and a container config."""

    def __init__(self, store: ImageStore, image_id: str, config: dict, repo_tags: list[str],
                 repo_digests: list[str], parent: str) -> None:
        self.store = store
        self.id = image_id
        self.config = config
        self.repo_tags = repo_tags
        self.repo_digests = repo_digests
        self.parent = parent

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.diff_ids)

    @property
    def top_chain(self) -> str | None:
        ids = self.chain_ids
        return ids[-1] if ids else None

    def layers(self) -> list[Layer]:
        return [self.store.layer(c) for c in self.chain_ids]

    def layer_dirs(self) -> list[str]:
        """Lowest layer first; overlayfs wants them reversed in ``lowerdir``."""
        return [layer.diff_dir for layer in self.layers()]

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers())

    @property
    def container_config(self) -> dict:
        return self.config.get("config") or {}

    def __repr__(self) -> str:
        return f"Image({self.id[7:19]} {self.repo_tags})"


class ImageStore:
    """Docker-shaped image operations over the on-disk layout described in the module docstring."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.lock = threading.RLock()
        self._pins: dict[str, int] = {}
        self._configs: dict[str, dict] = {}
        private_dir(self.root, 0o700)  # configs, layers and the build cache: readable by root only, as dockerd's
        for sub in ("layers", "blobs/sha256", "tmp"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        layout = os.path.join(self.root, "oci-layout")
        if not os.path.exists(layout):
            self._write_atomic(layout, canonical_json({"imageLayoutVersion": "1.0.0"}))
        self._clean_tmp()
        self._index = self._read_index()

    # --- persistence ------------------------------------------------------------------------------------------

    def _clean_tmp(self) -> None:
        """Whatever is in tmp/ was interrupted half-way (a crash mid-pull): it never became visible; drop it."""
        tmp = os.path.join(self.root, "tmp")
        for name in os.listdir(tmp):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)

    def _read_index(self) -> dict:
        try:
            with open(os.path.join(self.root, "index.json"), "rb") as f:
                index = json.load(f)
        except FileNotFoundError:
            index = {}
        for key in ("images", "tags", "digests"):
            index.setdefault(key, {})
        return index

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.{secrets.token_hex(16)}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _save_index(self) -> None:
        self._write_atomic(os.path.join(self.root, "index.json"), json.dumps(self._index, indent=1).encode())

    def blob_path(self, digest: str) -> str:
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
            raise InvalidParameter(f"invalid digest {digest!r}")
        return os.path.join(self.root, "blobs", "sha256", hexpart)

    def put_blob(self, data: bytes) -> str:
        """Store bytes content-addressed; return the digest."""
        digest = sha256_bytes(data)
        path = self.blob_path(digest)
        if not os.path.exists(path):
            self._write_atomic(path, data)
        return digest

    def get_blob(self, digest: str) -> bytes:
        with open(self.blob_path(digest), "rb") as f:
            return f.read()

    def tmpdir(self) -> str:
        """A fresh directory under tmp/, on the store's filesystem so results can be renamed into place."""
        path = os.path.join(self.root, "tmp", secrets.token_hex(16))
        os.mkdir(path, 0o700)
        return path

    @contextmanager
    def workdir(self) -> Iterator[str]:
        path = self.tmpdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    # --- layers -----------------------------------------------------------------------------------------------

    def _layer_path(self, chain: str) -> str:
        return os.path.join(self.root, "layers", chain.split(":", 1)[1])

    def has_layer(self, chain: str) -> bool:
        return os.path.exists(os.path.join(self._layer_path(chain), "layer.json"))

    def layer(self, chain: str) -> Layer:
        path = self._layer_path(chain)
        try:
            with open(os.path.join(path, "layer.json"), "rb") as f:
                return Layer(path, json.load(f))
        except FileNotFoundError:
            raise NotFound(f"layer {chain} does not exist") from None

    @contextmanager
    def pinned(self) -> Iterator[builtins.list[str]]:
        """Layers added inside this block survive garbage collection until the block ends (image not yet saved)."""
        pins: list[str] = []
        try:
            yield pins
        finally:
            with self.lock:
                for chain in pins:
                    self._pins[chain] -= 1
                    if not self._pins[chain]:
                        del self._pins[chain]

    def pin_layer(self, chain: str, pins: builtins.list[str]) -> bool:
        """Pin an existing layer for the duration of a ``pinned`` block; False if it is not there."""
        with self.lock:
            if not self.has_layer(chain):
                return False
            self._pin(pins, chain)
            return True

    def _pin(self, pins: builtins.list[str] | None, chain: str) -> None:
        if pins is not None:
            with self.lock:
                self._pins[chain] = self._pins.get(chain, 0) + 1
            pins.append(chain)

    def add_layer(self, blob: str, parent_chain: str | None, *, diff_id: str | None = None,
                  blob_digest: str | None = None, pins: builtins.list[str] | None = None,
                  blob_verified: bool = False) -> Layer:
        """Unpack the layer blob file ``blob`` (plain/gzip/zstd) on top of ``parent_chain`` (see ``add_layer_from``).

        The blob file is hard-linked (not moved) into the layer, so callers may reuse and must delete it.
        ``blob_verified`` says the caller already hashed the blob to ``blob_digest`` (a download), which saves
        hashing it again.
        """
        with archive.FileBlob(blob, blob_digest, blob_verified) as source:
            return self.add_layer_from(source, parent_chain, diff_id=diff_id, pins=pins)

    def add_layer_from(self, blob: archive.Blob, parent_chain: str | None, *, diff_id: str | None = None,
                       pins: builtins.list[str] | None = None) -> Layer:
        """Unpack a layer in the one pass that reads its blob (a download as it arrives, a file, a request body).

        The blob's digest (``blob.expected``) and ``diff_id``, when known, are verified before the layer is
        committed: it is unpacked in a fresh folder under tmp/ and renamed into place only then, so a mismatch or
        a hostile layer raises and leaves nothing. When the extraction fails the rest of the blob is still read,
        so that a corrupt blob is reported as one (its digest) rather than as whatever its bytes unpacked to.
        When ``diff_id`` is known and the layer already exists, nothing is read.
        """
        if diff_id is not None:
            chain = chain_id(parent_chain, diff_id)
            with self.lock:
                if self.has_layer(chain):
                    self._pin(pins, chain)
                    return self.layer(chain)
        work = self.tmpdir()
        try:
            try:
                with archive.unpacking_stream(blob) as (compression, stream):
                    if compression not in LAYER_MEDIA:
                        raise InvalidParameter(f"unsupported layer compression {compression}")
                    actual_diff, size, tar_size = archive.extract_layer(stream, os.path.join(work, "diff"))
            except InvalidParameter:  # a hostile or broken layer, or a corrupt blob: say which
                blob.finish()
                raise
            actual_blob, blob_size = blob.finish()
            if diff_id is not None and actual_diff != diff_id:
                raise InvalidParameter(f"layer diff ID mismatch: expected {diff_id}, got {actual_diff}")
            chain = chain_id(parent_chain, actual_diff)
            os.link(blob.path, os.path.join(work, "blob"))
            meta = {"chain_id": chain, "diff_id": actual_diff, "parent": parent_chain, "size": size,
                    "tar_size": tar_size, "blob_digest": actual_blob, "blob_size": blob_size,
                    "media_type": LAYER_MEDIA[compression]}
            self._write_atomic(os.path.join(work, "layer.json"), json.dumps(meta).encode())
            with self.lock:
                if not self.has_layer(chain):
                    os.rename(work, self._layer_path(chain))
                self._pin(pins, chain)
            return self.layer(chain)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def remember_blob(self, chain: str, descriptor: dict) -> None:
        """Note that a registry serves this layer as ``descriptor``, so a push can reuse it instead of re-gzipping."""
        with self.lock:
            layer = self.layer(chain)
            known = layer.remote_blobs()
            entry = {k: descriptor[k] for k in ("mediaType", "digest", "size") if k in descriptor}
            if entry not in known:
                self._write_atomic(os.path.join(layer.path, "remote.json"), json.dumps(known + [entry]).encode())

    def _referenced_chains(self) -> set:
        used = set(self._pins)
        for image_id in self._index["images"]:
            used.update(chain_ids((self._config(image_id).get("rootfs") or {}).get("diff_ids") or []))
        return used

    def _collect_layers(self) -> builtins.list[str]:
        """Remove layers no image uses (caller holds the lock); return their chain IDs."""
        used = self._referenced_chains()
        removed = []
        layers_dir = os.path.join(self.root, "layers")
        for name in os.listdir(layers_dir):
            chain = "sha256:" + name
            if chain in used:
                continue
            trash = os.path.join(self.root, "tmp", "gc-" + secrets.token_hex(16))
            os.rename(os.path.join(layers_dir, name), trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(chain)
        return removed

    # --- images: lookup -------------------------------------------------------------------------------------

    def _config(self, image_id: str) -> dict:
        config = self._configs.get(image_id)
        if config is None:
            config = json.loads(self.get_blob(image_id))
            self._configs[image_id] = config
        return config

    def _tags_of(self, image_id: str) -> builtins.list[str]:
        return sorted(reference.parse(t).familiar() for t, i in self._index["tags"].items() if i == image_id)

    def _digests_of(self, image_id: str) -> builtins.list[str]:
        return sorted(reference.parse(d).familiar() for d, i in self._index["digests"].items() if i == image_id)

    def _image(self, image_id: str) -> Image:
        return Image(self, image_id, self._config(image_id), self._tags_of(image_id), self._digests_of(image_id),
                     self._index["images"][image_id].get("parent", ""))

    def _lookup(self, ref: str) -> tuple[str, Reference | None]:
        """Image ID for a name, name:tag, name@digest, full ID or unique ID prefix; and the parsed name if any."""
        images = self._index["images"]
        if ref.startswith("sha256:") and ref in images:
            return ref, None
        parsed: Reference | None = None
        try:
            parsed = reference.parse(ref)
        except InvalidParameter:
            parsed = None
        if parsed is not None:
            key = str(parsed)
            table = self._index["digests"] if parsed.digest else self._index["tags"]
            if parsed.digest and parsed.tag:
                key = f"{parsed.name}@{parsed.digest}"
            if key in table:
                return table[key], parsed
        prefix = ref[7:] if ref.startswith("sha256:") else ref
        if prefix and all(c in "0123456789abcdef" for c in prefix):
            matches = [i for i in images if i[7:].startswith(prefix)]
            if len(matches) == 1:
                return matches[0], None
        shown = parsed.familiar() if parsed is not None else ref
        raise NotFound(f"No such image: {shown}")

    def resolve(self, ref: str) -> Image:
        """The image for ``ref``, or NotFound("No such image: ...")."""
        with self.lock:
            image_id, _ = self._lookup(ref)
            return self._image(image_id)

    def exists(self, ref: str) -> bool:
        try:
            self.resolve(ref)
            return True
        except NotFound:
            return False

    @staticmethod
    def normalize(ref: str) -> str:
        return reference.normalize(ref)

    def tags_of_repo(self, name: str) -> builtins.list[str]:
        """Full references of every tag of the repository ``name`` (``docker.io/library/alpine``)."""
        with self.lock:
            return sorted(t for t in self._index["tags"] if reference.parse(t).name == name)

    def _children(self, image_id: str) -> builtins.list[str]:
        return [i for i, rec in self._index["images"].items() if rec.get("parent") == image_id]

    # --- images: Docker-shaped views -------------------------------------------------------------------------

    def summary(self, image: Image) -> dict:
        labels = image.container_config.get("Labels") or {}
        return {
            "Id": image.id, "ParentId": image.parent,
            "RepoTags": image.repo_tags, "RepoDigests": image.repo_digests,
            "Created": parse_time(image.config.get("created")), "Size": image.size, "SharedSize": -1,
            "VirtualSize": image.size, "Labels": labels, "Containers": -1,
        }

    def list(self, all: bool = False, filters: Args | None = None) -> builtins.list[dict]:  # noqa: A002 - Docker's name
        """``GET /images/json``: newest first; intermediate build images only with ``all``.

        Filters as moby's: ``dangling``, ``label``/``label!``, ``reference`` (glob on the familiar name), ``before``/
        ``since`` (an image), ``until`` (a time)."""
        args = Args.of(filters).validate(LIST_FILTERS)
        dangling = args.get_bool("dangling", False) if args.contains("dangling") else None
        patterns = args.get("reference")
        until = args.until()
        with self.lock:
            before = [self._created(r) for r in args.get("before")]
            since = [self._created(r) for r in args.get("since")]
            out: list[tuple[float, dict]] = []
            for image_id in self._index["images"]:
                image = self._image(image_id)
                untagged = not image.repo_tags and not image.repo_digests
                if untagged and not all and self._children(image_id) and dangling is None:
                    continue
                if dangling is not None and untagged != dangling:
                    continue
                if patterns and not any(_reference_match(p, t) for t in image.repo_tags for p in patterns):
                    continue
                if not args.match_labels(image.container_config.get("Labels") or {}):
                    continue
                created = timefmt.parse_rfc3339_or(image.config.get("created"))
                if any(created >= b for b in before) or any(created <= s for s in since):
                    continue
                if until is not None and created > until:
                    continue
                out.append((created, self.summary(image)))
        out.sort(key=lambda item: item[0], reverse=True)  # to the nanosecond: images of one second keep their order
        return [summary for _, summary in out]

    def _created(self, ref: str) -> float:
        """When the image ``ref`` names was created, to the nanosecond (``before``/``since`` compare it)."""
        return timefmt.parse_rfc3339_or(self._config(self._lookup(ref)[0]).get("created"))

    def inspect(self, ref: str) -> dict:
        """``GET /images/{name}/json`` (ImageInspect)."""
        image = self.resolve(ref)
        config = image.config
        dirs = image.layer_dirs()
        rec = self._index["images"].get(image.id, {})
        return {
            "Id": image.id, "RepoTags": image.repo_tags, "RepoDigests": image.repo_digests,
            "Parent": image.parent, "Comment": self._last_history(config).get("comment", ""),
            "Created": config.get("created") or ZERO_TIME, "DockerVersion": config.get("docker_version", ""),
            "Author": config.get("author", ""), "Config": self._image_config(image.container_config),
            "Architecture": config.get("architecture", ""), "Variant": config.get("variant"),
            "Os": config.get("os", "linux"), "Size": image.size, "VirtualSize": image.size,
            "GraphDriver": {"Name": "overlay2", "Data": {"LowerDir": ":".join(reversed(dirs))} if dirs else {}},
            "RootFS": {"Type": "layers", "Layers": image.diff_ids},
            "Metadata": {"LastTagTime": rec.get("last_tag_time") or ZERO_TIME},
        }

    @staticmethod
    def _last_history(config: dict) -> dict:
        history = config.get("history") or [{}]
        return history[-1]

    @staticmethod
    def _image_config(cfg: dict) -> dict:
        out = {"Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": False,
               "AttachStderr": False, "Tty": False, "OpenStdin": False, "StdinOnce": False, "Env": None,
               "Cmd": None, "Image": "", "Volumes": None, "WorkingDir": "", "Entrypoint": None, "OnBuild": None,
               "Labels": None}
        out.update(cfg)
        return out

    def history(self, ref: str) -> builtins.list[dict]:
        """``GET /images/{name}/history``: newest first, with IDs where an image of that step is known."""
        with self.lock:
            image_id, _ = self._lookup(ref)
            ids: dict[int, str] = {}
            cursor = image_id
            while cursor and cursor in self._index["images"]:
                ids[len(self._config(cursor).get("history") or []) - 1] = cursor
                cursor = self._index["images"][cursor].get("parent", "")
            image = self._image(image_id)
            layers = image.layers()
        out = []
        layer_index = 0
        for n, entry in enumerate(image.config.get("history") or []):
            size = 0
            if not entry.get("empty_layer") and layer_index < len(layers):
                size = layers[layer_index].size
                layer_index += 1
            owner = ids.get(n, "<missing>")
            out.append({"Id": owner, "Created": parse_time(entry.get("created")),
                        "CreatedBy": entry.get("created_by", ""),
                        "Tags": self._tags_of(owner) if owner != "<missing>" else None,
                        "Size": size, "Comment": entry.get("comment", "")})
        out.reverse()
        return out

    # --- tags and removal -------------------------------------------------------------------------------------

    def _set_tag(self, ref: Reference, image_id: str) -> None:
        """Point ``ref`` at ``image_id`` (caller holds the lock and saves the index)."""
        self._index["tags"][str(ref)] = image_id
        self._index["images"][image_id]["last_tag_time"] = timefmt.rfc3339_nano()

    def tag(self, ref: str, repo: str, tag: str | None = None) -> None:
        """``POST /images/{name}/tag``."""
        target = reference.join_repo_tag(repo, tag)
        if target.digest:
            raise InvalidParameter("refusing to create a tag with a digest reference")
        with self.lock:
            image_id, _ = self._lookup(ref)
            self._set_tag(target, image_id)
            self._save_index()

    def _refs_of(self, image_id: str) -> builtins.list[tuple[str, str]]:
        """(table, key) pairs naming ``image_id``."""
        return [(table, key) for table in ("tags", "digests")
                for key, i in self._index[table].items() if i == image_id]

    def remove(self, ref: str, force: bool = False, noprune: bool = False,
               in_use: InUse | None = None) -> builtins.list[dict]:
        """``DELETE /images/{name}``: untag, then delete the image (and dangling parents) when nothing names it.

        ``in_use(image_id)`` returns a container ID (or True) when a container uses the image.
        """
        in_use = in_use or (lambda _image_id: None)
        with self.lock:
            image_id, parsed = self._lookup(ref)
            refs = self._refs_of(image_id)
            user = in_use(image_id)
            items: list[dict] = []
            if parsed is not None:
                key = ("digests", f"{parsed.name}@{parsed.digest}") if parsed.digest else ("tags", str(parsed))
                if len(refs) == 1 and user and not force:
                    raise Conflict(f'conflict: unable to remove repository reference "{ref}" (must force) - container '
                                   f'{_short(user)} is using its referenced image {image_id[7:19]}')
                del self._index[key[0]][key[1]]
                items.append({"Untagged": parsed.familiar()})
                refs = self._refs_of(image_id)
                if not parsed.digest and not any(t == "tags" and reference.parse(k).name == parsed.name
                                                 for t, k in refs):
                    # the repository's last tag is gone: its digest references go with it, as in moby
                    for table, other in list(refs):
                        if table == "digests" and reference.parse(other).name == parsed.name:
                            del self._index[table][other]
                            items.append({"Untagged": reference.parse(other).familiar()})
                            refs.remove((table, other))
                if refs or self._children(image_id):
                    self._save_index()
                    return items
            else:
                if len(refs) > 1 and not force:
                    raise Conflict(f"conflict: unable to delete {image_id[7:19]} (must be forced) - image is referenced in multiple "
                                   "repositories")
                if user and not force:
                    raise Conflict(f"conflict: unable to delete {image_id[7:19]} (must be forced) - image is being used by "
                                   f"container {_short(user)}")
                if self._children(image_id):
                    raise Conflict(f"conflict: unable to delete {image_id[7:19]} (cannot be forced) - image has dependent child "
                                   "images")
                for table, name in refs:
                    del self._index[table][name]
                    items.append({"Untagged": reference.parse(name).familiar()})
            if user:
                self._save_index()  # forced: untagged, but a container still runs on it
                return items
            items.extend(self._delete_image(image_id, prune_parents=not noprune, in_use=in_use))
            self._save_index()
            return items

    def _delete_image(self, image_id: str, prune_parents: bool, in_use: InUse) -> builtins.list[dict]:
        """Delete an untagged, childless image (lock held); then its parents that became dangling, then layers."""
        items = []
        cursor = image_id
        while cursor:
            parent = self._index["images"].pop(cursor).get("parent", "")
            self._configs.pop(cursor, None)
            items.append({"Deleted": cursor})
            if not (prune_parents and parent in self._index["images"]):
                break
            if self._refs_of(parent) or self._children(parent) or in_use(parent):
                break
            cursor = parent
        items.extend({"Deleted": chain} for chain in self._collect_layers())
        return items

    def prune(self, filters: Args | None = None, in_use: InUse | None = None) -> dict:
        """``POST /images/prune``: dangling images (or all unused with ``dangling=false``) not used by containers,
        narrowed by ``label``/``label!`` and ``until`` as moby's."""
        in_use = in_use or (lambda _image_id: None)
        args = Args.of(filters).validate(PRUNE_FILTERS)
        dangling_only = args.get_bool("dangling", True)
        until = args.until()
        deleted: list[dict] = []
        with self.lock:
            before = sum(self.layer(c).size for c in self._referenced_chains() if self.has_layer(c))
            changed = True
            while changed:
                changed = False
                for image_id in list(self._index["images"]):
                    if image_id not in self._index["images"] or self._children(image_id) or in_use(image_id):
                        continue
                    refs = self._refs_of(image_id)
                    if refs and dangling_only:
                        continue
                    image = self._image(image_id)
                    if not args.match_labels(image.container_config.get("Labels") or {}):
                        continue
                    if until is not None and timefmt.parse_rfc3339_or(image.config.get("created")) > until:
                        continue
                    for table, key in refs:
                        del self._index[table][key]
                        deleted.append({"Untagged": reference.parse(key).familiar()})
                    deleted.extend(self._delete_image(image_id, prune_parents=False, in_use=in_use))
                    changed = True
            deleted.extend({"Deleted": chain} for chain in self._collect_layers())  # left by failed pulls
            self._save_index()
            after = sum(self.layer(c).size for c in self._referenced_chains() if self.has_layer(c))
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": max(0, before - after)}

    # --- creating images -------------------------------------------------------------------------------------

    def register(self, config_bytes: bytes, *, tags: Sequence[Reference] = (), digests: Sequence[Reference] = (),
                 parent: str = "") -> Image:
        """Record an image whose layers are all present; its ID is the sha256 of ``config_bytes``."""
        config = json.loads(config_bytes)
        for chain in chain_ids((config.get("rootfs") or {}).get("diff_ids") or []):
            if not self.has_layer(chain):
                raise InvalidParameter(f"image config refers to missing layer {chain}")
        image_id = self.put_blob(config_bytes)
        with self.lock:
            rec = self._index["images"].setdefault(image_id, {})
            if parent:
                rec["parent"] = parent
            for ref in tags:
                self._set_tag(ref, image_id)
            for ref in digests:
                self._index["digests"][f"{ref.name}@{ref.digest}"] = image_id
            self._save_index()
            return self._image(image_id)

    def new_config(self, parent: Image | None, diff_id: str | None, config: dict | None,
                   created_by: str = "", comment: str = "", author: str = "") -> bytes:
        """Config JSON for a child of ``parent`` (or a base image) with one more history step and maybe a layer."""
        if parent is not None:
            base = copy.deepcopy(parent.config)
            for key in ("container", "container_config", "docker_version", "id", "parent"):
                base.pop(key, None)
        else:
            base = dict(host_platform())
            base.update({"config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []})
        created = timefmt.rfc3339_nano()
        base["created"] = created
        if author:
            base["author"] = author
        if config is not None:
            base["config"] = config
        step: dict = {"created": created, "created_by": created_by}
        if comment:
            step["comment"] = comment
        if diff_id is None:
            step["empty_layer"] = True
        else:
            base.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(diff_id)
        base.setdefault("history", []).append(step)
        return canonical_json(base)

    def add_layer_stream(self, fileobj: IO[bytes], parent_chain: str | None,
                         pins: builtins.list[str] | None = None) -> Layer:
        """``add_layer`` for a layer that arrives as a stream (request bodies): unpacked as it arrives."""
        with self.workdir() as work, archive.CopiedBlob(fileobj, os.path.join(work, "layer")) as blob:
            return self.add_layer_from(blob, parent_chain, pins=pins)

    def import_tar(self, fileobj: IO[bytes], repo_tag: str | None = None,
                   changes: Sequence[str] | None = None, message: str = "") -> str:
        """``docker import``: a root filesystem tar (plain, gzip, zstd) -> a one-layer image; returns its ID."""
        tag = reference.parse(repo_tag) if repo_tag else None
        config = apply_changes({}, changes or [])
        with self.pinned() as pins:
            layer = self.add_layer_stream(fileobj, None, pins)
            data = self.new_config(None, layer.diff_id, config, comment=message or "Imported from -")
            return self.register(data, tags=[tag] if tag else []).id

    def commit(self, upper_dir: str | None, parent: Image | None, config_changes: dict | None,
               repo_tag: str | None = None, *, created_by: str = "", comment: str = "",
               author: str = "") -> Image:
        """A child image of ``parent``: one layer made from an overlay upper dir (None: config-only step).

        ``config_changes`` replaces keys of the container config (``Cmd``, ``Env``, ...).
        """
        config = dict(parent.container_config) if parent is not None else {}
        config.update(config_changes or {})
        tag = reference.parse(repo_tag) if repo_tag else None
        with self.pinned() as pins:
            diff_id = None
            if upper_dir is not None:
                with self.workdir() as work:
                    path = os.path.join(work, "layer.tar")
                    digest = archive.write_stream(archive.upper_dir_tar(upper_dir), path)
                    diff_id = self.add_layer(path, parent.top_chain if parent else None, pins=pins,
                                             blob_digest=digest, blob_verified=True).diff_id
            data = self.new_config(parent, diff_id, config, created_by=created_by, comment=comment, author=author)
            return self.register(data, tags=[tag] if tag else [], parent=parent.id if parent else "")

    def named_images(self, refs: Sequence[str]) -> builtins.list[tuple[Image, builtins.list[Reference]]]:
        """What ``docker save REF...`` writes: each image once, with the tags its references name (a bare
        repository names all of its tags; an ID or a digest names none)."""
        entries: list[tuple[Image, list[Reference]]] = []
        with self.lock:
            for text in refs:
                image_id, parsed = self._lookup(text)
                names: list[Reference] = []
                if parsed is not None and not text.startswith("sha256:"):
                    bare = reference.parse(text, default_tag=False)
                    if bare.tag is None and bare.digest is None:
                        names = [reference.parse(t) for t, i in self._index["tags"].items()
                                 if i == image_id and reference.parse(t).name == bare.name]
                    elif bare.tag is not None:
                        names = [parsed]
                for image, known in entries:
                    if image.id == image_id:
                        known.extend(n for n in names if n not in known)
                        break
                else:
                    entries.append((self._image(image_id), names))
        return entries


def _short(container: str | bool) -> str:
    return container[:12] if isinstance(container, str) else "(unknown)"
