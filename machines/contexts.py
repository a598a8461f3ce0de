"""Docker contexts for machines, written as ``docker context create`` writes them, so ``docker --context NAME``
and ``docker context use`` work without ``machines env``.

A context lives in ``$DOCKER_CONFIG`` (default ``~/.docker``): ``contexts/meta/<sha256 of the name>/meta.json``
and, for TLS, ``contexts/tls/<same>/docker/{ca,cert,key}.pem`` (0600). The current one is ``currentContext`` in
``config.json``. Contexts machines made carry ``MachinesStore`` in their metadata, so that ``machines rm`` removes
only its own, never a context of the same name the user made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from machines.errors import StateError, UsageError
from machines.store import atomic_write

TLS_FILES = ("ca.pem", "cert.pem", "key.pem")


def config_dir() -> Path:
    """The docker CLI's configuration folder: ``$DOCKER_CONFIG`` or ``~/.docker``."""
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def _context_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _meta_path(name: str) -> Path:
    return config_dir() / "contexts" / "meta" / _context_id(name) / "meta.json"


def _tls_dir(name: str) -> Path:
    return config_dir() / "contexts" / "tls" / _context_id(name) / "docker"


def read(name: str) -> dict[str, Any] | None:
    """The context's meta.json, or None when there is none."""
    try:
        meta: dict[str, Any] = json.loads(_meta_path(name).read_text())
    except (OSError, ValueError):
        return None
    return meta


def write(name: str, variables: dict[str, str | None], store_root: Path) -> Path:
    """Create or update context ``name`` from a machine's ``env`` variables (``DOCKER_HOST``, and with
    ``DOCKER_TLS_VERIFY`` the certificates in ``DOCKER_CERT_PATH``); returns the meta.json path."""
    if name == "default":
        raise UsageError('"default" is a reserved context name (docker\'s own)')
    existing = read(name)
    if existing is not None and not _ours(existing, store_root):
        raise StateError(f"a docker context named {name!r} exists and was not made by machines; "
                         f"remove it first ('docker context rm {name}')")
    host = variables.get("DOCKER_HOST")
    if not host:
        raise StateError(f"machine {name!r} has no endpoint to put in a docker context")
    tls = variables.get("DOCKER_TLS_VERIFY") == "1"
    tls_dir = _tls_dir(name)
    shutil.rmtree(tls_dir.parent, ignore_errors=True)
    if tls:
        cert_path = Path(variables.get("DOCKER_CERT_PATH") or "")
        tls_dir.mkdir(mode=0o700, parents=True)
        for file_name in TLS_FILES:
            atomic_write(tls_dir / file_name, (cert_path / file_name).read_bytes(), mode=0o600)
    meta = {
        "Name": name,
        "Metadata": {"Description": f"machines: {name}", "MachinesStore": str(store_root)},
        "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}},
    }
    path = _meta_path(name)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    atomic_write(path, json.dumps(meta).encode(), mode=0o644)
    return path


def _ours(meta: dict[str, Any], store_root: Path) -> bool:
    return (meta.get("Metadata") or {}).get("MachinesStore") == str(store_root)


def remove(name: str, store_root: Path) -> bool:
    """Remove the context machines made for ``name`` from this store (a user's own is left); whether one was.
    When it was the current context, docker goes back to its default, as ``docker context rm`` requires."""
    meta = read(name)
    if meta is None or not _ours(meta, store_root):
        return False
    shutil.rmtree(_meta_path(name).parent, ignore_errors=True)
    shutil.rmtree(_tls_dir(name).parent, ignore_errors=True)
    config = _read_config()
    if config.get("currentContext") == name:
        config.pop("currentContext")
        _write_config(config)
    return True


def use(name: str) -> None:
    """Make ``name`` docker's current context (``currentContext`` in config.json), as ``docker context use``."""
    if read(name) is None:
        raise StateError(f"no docker context named {name!r}: run 'machines context {name}' first")
    config = _read_config()
    config["currentContext"] = name
    _write_config(config)


def _read_config() -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((config_dir() / "config.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise StateError(f"cannot read {config_dir() / 'config.json'}: {error}") from None
    return config


def _write_config(config: dict[str, Any]) -> None:
    path = config_dir() / "config.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = 0o600
    with contextlib.suppress(OSError):
        mode = path.stat().st_mode & 0o777
    atomic_write(path, (json.dumps(config, indent="\t") + "\n").encode(), mode=mode)
