"""``machines import-docker-machine``: adopt the machines of a Docker Machine store, without changing their hosts.

Docker Machine keeps ``<store>/machines/<name>/config.json`` (``DriverName``, the driver's ``IPAddress``,
``SSHUser``, ``SSHPort``, ``SSHKeyPath``, ``HostOptions.EngineOptions``) beside the machine's key and TLS files
(``ca.pem``, ``cert.pem``, ``key.pem``, ``server.pem``, ``server-key.pem``). Each machine of a supported driver
becomes a ``generic`` entry: the SSH key and the certificates are copied, the engine labels, environment, insecure
registries and mirrors become its host options, and the host key is pinned as ``create -d generic`` pins it (from
``~/.ssh/known_hosts``, else on this first connection). Nothing is installed: the host keeps the Docker Engine
Docker Machine put there, reached with Docker Machine's CA (kept in the machine's folder), and ``provision``,
``upgrade``, ``set`` and ``regenerate-certs`` refuse such a machine.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from machines.errors import MachinesError, UsageError
from machines.hostoptions import EngineOptions, HostOptions
from machines.machine import Machines
from machines.progress import Progress

DRIVERS = ("generic", "amazonec2", "azure", "virtualbox")
TLS_FILES = ("ca.pem", "cert.pem", "key.pem", "server.pem", "server-key.pem")
IMPORTED_FROM = "docker-machine"
DEFAULT_SOURCE = Path.home() / ".docker" / "machine"


def _config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"{folder / 'config.json'}: not a Docker Machine config ({error})") from None
    if not isinstance(config, dict) or not isinstance(config.get("Driver"), dict):
        raise UsageError(f"{folder / 'config.json'}: not a Docker Machine config (no Driver)")
    return config


def _host_options(config: dict[str, Any]) -> HostOptions:
    engine = (config.get("HostOptions") or {}).get("EngineOptions") or {}
    return HostOptions(labels=tuple(engine.get("Labels") or ()), engine=EngineOptions(
        env=tuple(engine.get("Env") or ()), insecure_registries=tuple(engine.get("InsecureRegistry") or ()),
        registry_mirrors=tuple(engine.get("RegistryMirror") or ())))


def names(source: Path) -> list[str]:
    """The machines of a Docker Machine store, by name."""
    folder = source / "machines"
    if not folder.is_dir():
        raise UsageError(f"{source} is not a Docker Machine store (no machines folder)")
    return sorted(path.name for path in folder.iterdir() if (path / "config.json").is_file())


def import_machine(machines: Machines, source: Path, name: str, progress: Progress) -> None:
    """Adopt one machine as a ``generic`` entry (all or nothing, as ``create``)."""
    folder = source / "machines" / name
    config = _config(folder)
    driver_name = config.get("DriverName")
    if driver_name not in DRIVERS:
        raise UsageError(f"{name}: Docker Machine driver {driver_name!r} cannot be imported (only {', '.join(DRIVERS)})")
    driver = config["Driver"]
    key = Path(driver.get("SSHKeyPath") or folder / "id_rsa")
    if not key.is_file():
        key = folder / "id_rsa"
    missing = [file for file in TLS_FILES if not (folder / file).is_file()]
    if missing:
        raise UsageError(f"{name}: {', '.join(missing)} missing in {folder}")
    if not driver.get("IPAddress"):
        raise UsageError(f"{name}: Docker Machine recorded no IP address for it")
    flags = {"ip_address": driver["IPAddress"], "ssh_user": driver.get("SSHUser") or "root",
             "ssh_port": int(driver.get("SSHPort") or 22), "ssh_key": str(key)}
    machine = machines.create(name, "generic", flags, host_options=_host_options(config), provision=False,
                              progress=progress)
    try:
        for file in TLS_FILES:
            target = machine.dir / file
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle, open(folder / file, "rb") as original:
                shutil.copyfileobj(original, handle)
        machine.record["runtime"] = {"api": "tls", "port": int(driver.get("EnginePort") or 2376),
                                     "imported_from": IMPORTED_FROM, "engine": "docker"}
        machine.save()
    except (OSError, MachinesError):
        machine.close()
        machines.store.delete(name)
        raise
    machine.close()
