"""Named volumes: ``<data-root>/volumes/<name>/_data`` plus a small metadata file, in Docker's Volume shape."""
from __future__ import annotations

import builtins
import json
import os
import re
import secrets
import shutil
import threading
import time
from typing import Callable

from runtime.errors import Conflict, InvalidParameter, NotFound
from runtime.linux.paths import tree_size

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _filter_values(filters: dict | None, key: str) -> list[str]:
    value = (filters or {}).get(key)
    if value is None:
        return []
    if isinstance(value, dict):
        return [k for k, on in value.items() if on]
    if isinstance(value, str):
        return [value]
    return list(value)


def labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    for spec in wanted:
        key, eq, value = spec.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


class VolumeStore:
    """Volumes survive the containers that use them; ``in_use`` (given by the engine) says which are busy."""

    def __init__(self, root: str, in_use: Callable[[str], builtins.list[str]]) -> None:
        self.root = root
        self._in_use = in_use
        self._lock = threading.RLock()
        os.makedirs(root, mode=0o701, exist_ok=True)

    def _dir(self, name: str) -> str:
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
        if not NAME_RE.match(name):
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
            meta = {"Name": name, "CreatedAt": _now(), "Labels": labels, "Options": body.get("DriverOpts") or {}}
            tmp = os.path.join(self._dir(name), "volume.json.tmp")
            with open(tmp, "w") as f:
                json.dump(meta, f)
            os.replace(tmp, os.path.join(self._dir(name), "volume.json"))
            return self._shape(meta)

    def exists(self, name: str) -> bool:
        return os.path.exists(os.path.join(self._dir(name), "volume.json"))

    def inspect(self, name: str) -> dict:
        with self._lock:
            return self._shape(self._meta(name))

    def path(self, name: str) -> str:
        return os.path.join(self._dir(name), "_data")

    def list(self, filters: dict | None = None) -> dict:
        out = []
        names = _filter_values(filters, "name")
        labels = _filter_values(filters, "label")
        dangling = _filter_values(filters, "dangling")
        with self._lock:
            for name in sorted(os.listdir(self.root)):
                try:
                    vol = self._shape(self._meta(name))
                except (NotFound, ValueError):
                    continue
                if names and not any(n in name for n in names):
                    continue
                if labels and not labels_match(vol["Labels"], labels):
                    continue
                if dangling and (dangling[0] in ("1", "true")) == bool(self._in_use(name)):
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

    def prune(self, filters: dict | None = None) -> dict:
        """Removes unused volumes; like Docker 23+, only anonymous ones unless the filter says ``all=true``."""
        everything = any(v in ("1", "true") for v in _filter_values(filters, "all"))
        labels = _filter_values(filters, "label")
        deleted, reclaimed = [], 0
        with self._lock:
            for vol in self.list()["Volumes"]:
                if not everything and "com.docker.volume.anonymous" not in vol["Labels"]:
                    continue
                if labels and not labels_match(vol["Labels"], labels):
                    continue
                if self._in_use(vol["Name"]):
                    continue
                reclaimed += tree_size(vol["Mountpoint"])
                shutil.rmtree(self._dir(vol["Name"]), ignore_errors=True)
                deleted.append(vol["Name"])
        return {"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed}
