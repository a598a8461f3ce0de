"""Named volumes: ``<data-root>/volumes/<name>/_data`` plus a small metadata file, in Docker's Volume shape."""
from __future__ import annotations

import builtins
import json
import os
import re
import secrets
import shutil
import threading
from typing import Callable

from machines.runtime import timefmt
from machines.runtime.errors import Conflict, InvalidParameter, NotFound
from machines.runtime.filters import Args
from machines.runtime.linux.paths import private_dir, tree_size

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # moby's; always fullmatch: "$" would let "x\n" by


LIST_FILTERS = ("dangling", "name", "driver", "label")
PRUNE_FILTERS = ("label", "label!", "all", "until")  # ``until`` beyond moby's: as container and network prune


class VolumeStore:
    """Volumes survive the containers that use them; ``in_use`` (given by the engine) says which are busy."""

    def __init__(self, root: str, in_use: Callable[[str], builtins.list[str]]) -> None:
        self.root = root
        self._in_use = in_use
        self._lock = threading.RLock()
        private_dir(root, 0o701)  # dockerd's: others may reach a volume they know, never list them

    def _dir(self, name: str) -> str:
        """The volume's folder; a name that could not have been created (``../x`` from a URL) is no volume."""
        if not NAME_RE.fullmatch(name):
            raise NotFound(f"get {name}: no such volume")
        return os.path.join(self.root, name)

    def _meta(self, name: str) -> dict:
        try:
            with open(os.path.join(self._dir(name), "volume.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            raise NotFound(f"get {name}: no such volume") from None

    def _shape(self, meta: dict) -> dict:
        return {"Name": meta["Name"], "Driver": "local", "Mountpoint": os.path.join(self._dir(meta["Name"]), "_data"),
                "CreatedAt": meta["CreatedAt"], "Labels": meta.get("Labels") or {}, "Scope": "local",
                "Options": meta.get("Options") or {}}

    def create(self, body: dict | None = None, anonymous: bool = False) -> dict:
        """Creates the volume, or returns the existing one of that name (Docker's create is idempotent)."""
        body = body or {}
        name = body.get("Name") or secrets.token_hex(32)
        driver = body.get("Driver") or "local"
        if driver != "local":
            raise NotFound(f"plugin {driver!r} not found")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidParameter(f"create {name}: {name!r} includes invalid characters for a local volume name, only "
                                   "\"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host "
                                   "directory, use absolute path")
        with self._lock:
            try:
                return self._shape(self._meta(name))
            except NotFound:
                pass
            os.makedirs(os.path.join(self._dir(name), "_data"), exist_ok=True)
            labels = dict(body.get("Labels") or {})
            if anonymous:
                labels.setdefault("com.docker.volume.anonymous", "")
            meta = {"Name": name, "CreatedAt": timefmt.rfc3339(), "Labels": labels, "Options": body.get("DriverOpts") or {}}
            tmp = os.path.join(self._dir(name), "volume.json.tmp")
            with open(tmp, "w") as f:
                json.dump(meta, f)
            os.replace(tmp, os.path.join(self._dir(name), "volume.json"))
            return self._shape(meta)

    def exists(self, name: str) -> bool:
        return bool(NAME_RE.fullmatch(name)) and os.path.exists(os.path.join(self._dir(name), "volume.json"))

    def inspect(self, name: str) -> dict:
        with self._lock:
            return self._shape(self._meta(name))

    def path(self, name: str) -> str:
        return os.path.join(self._dir(name), "_data")

    def list(self, filters: Args | None = None) -> dict:
        """``GET /volumes``: filters ``name`` (a regular expression), ``driver``, ``label``, ``dangling``."""
        args = Args.of(filters).validate(LIST_FILTERS)
        dangling = args.get_bool("dangling", False) if args.contains("dangling") else None
        out = []
        with self._lock:
            for name in sorted(os.listdir(self.root)):
                try:
                    vol = self._shape(self._meta(name))
                except (NotFound, ValueError):
                    continue
                if not args.match("name", name) or not args.exact_match("driver", vol["Driver"]):
                    continue
                if not args.match_kv_list("label", vol["Labels"]):
                    continue
                if dangling is not None and dangling == bool(self._in_use(name)):
                    continue
                out.append(vol)
        return {"Volumes": out, "Warnings": []}

    def remove(self, name: str, force: bool = False) -> None:
        with self._lock:
            self._meta(name)
            users = self._in_use(name)
            if users:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
            shutil.rmtree(self._dir(name), ignore_errors=True)

    def prune(self, filters: Args | None = None) -> dict:
        """Removes unused volumes; like Docker 23+ (API 1.42), only anonymous ones unless ``all=true`` (the API
        layer adds it for older clients), narrowed by ``label``/``label!`` and ``until``."""
        args = Args.of(filters).validate(PRUNE_FILTERS)
        everything = args.get_bool("all", False)
        until = args.until()
        deleted, reclaimed = [], 0
        with self._lock:
            for vol in self.list()["Volumes"]:
                if not everything and "com.docker.volume.anonymous" not in vol["Labels"]:
                    continue
                if not args.match_labels(vol["Labels"]):
                    continue
                if until is not None and timefmt.parse_rfc3339_or(vol["CreatedAt"]) > until:
                    continue
                if self._in_use(vol["Name"]):
                    continue
                reclaimed += tree_size(vol["Mountpoint"])
                shutil.rmtree(self._dir(vol["Name"]), ignore_errors=True)
                deleted.append(vol["Name"])
        return {"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed}
