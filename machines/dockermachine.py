"""``machines import-docker-machine``: adopt the machines of a Docker Machine store, without changing their hosts.

Docker Machine keeps ``<store>/machines/<name>/config.json`` (``DriverName``, the driver's ``IPAddress``,
``SSHUser``, ``SSHPort``, ``SSHKeyPath``, ``HostOptions.EngineOptions``) beside the machine's key and TLS files
(``ca.pem``, ``cert.pem``, ``key.pem``, ``server.pem``, ``server-key.pem``). Each machine of a supported driver
becomes a ``generic`` entry: the SSH key and the certificates are copied, the engine labels, environment, insecure
registries and mirrors become its host options, and the host key is pinned as ``create -d generic`` pins it (from
``~/.ssh/known_hosts``, else on this first connection). Nothing is installed: the host keeps the Docker Engine
Docker Machine put there, reached with Docker Machine's CA (kept in the machine's folder), and ``provision``,
``upgrade``, ``set`` and ``regenerate-certs`` refuse such a machine.

An ``amazonec2`` machine whose instance EC2 still shows becomes a native ``aws`` entry instead (its instance id,
region, zone, VPC, subnet, instance type, endpoint and credentials as Docker Machine recorded them, and its key), so
``start``, ``stop``, ``kill`` and ``rm`` act on the instance; adopting it only asks EC2 to describe it. Docker
Machine's key pair and security group stay Docker Machine's (``rm`` terminates the instance and leaves them); its
host key is pinned at the first connection. ``azure`` and ``virtualbox`` machines are imported as ``generic``: our
azure driver names its resources its own way, and our virtualbox driver is a Vagrant project, which Docker Machine's
VirtualBox VMs are not.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from machines.drivers import registry
from machines.drivers.base import State
from machines.errors import MachinesError, UsageError
from machines.hostoptions import EngineOptions, HostOptions
from machines.machine import Machine, Machines
from machines.progress import Progress
from machines.store import STATE_READY, new_record, validate_name

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
    """Adopt one machine as a native ``aws`` or a ``generic`` entry (all or nothing, as ``create``)."""
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
    options = _host_options(config)
    if driver_name == "amazonec2" and driver.get("InstanceId"):
        machine = _adopt_ec2(machines, name, driver, options, progress)
        copied = {**{file: folder / file for file in TLS_FILES}, "id_rsa": key}
    else:
        if not driver.get("IPAddress"):
            raise UsageError(f"{name}: Docker Machine recorded no IP address for it")
        flags = {"ip_address": driver["IPAddress"], "ssh_user": driver.get("SSHUser") or "root",
                 "ssh_port": int(driver.get("SSHPort") or 22), "ssh_key": str(key)}
        machine = machines.create(name, "generic", flags, host_options=options, provision=False, progress=progress)
        copied = {file: folder / file for file in TLS_FILES}
    try:
        for target, source_path in copied.items():
            fd = os.open(machine.dir / target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle, open(source_path, "rb") as original:
                shutil.copyfileobj(original, handle)
        machine.record["runtime"] = {"api": "tls", "port": int(driver.get("EnginePort") or 2376),
                                     "imported_from": IMPORTED_FROM, "engine": "docker"}
        machine.record["state"] = STATE_READY
        machine.save()
    except (OSError, MachinesError):
        machine.close()
        machines.store.delete(name)
        raise
    machine.close()


# Docker Machine's amazonec2 fields (drivers/amazonec2/amazonec2.go) -> our aws driver's flag keys.
EC2_FLAGS = {"Region": "region", "Zone": "zone", "InstanceType": "instance_type", "AMI": "ami", "VpcId": "vpc_id",
             "SubnetId": "subnet_id", "Endpoint": "endpoint", "AccessKey": "access_key", "SecretKey": "secret_key",
             "SessionToken": "session_token", "SSHUser": "ssh_user", "RootSize": "root_size",
             "UsePrivateIP": "use_private_address", "PrivateIPOnly": "private_address_only",
             "RequestSpotInstance": "request_spot_instance"}


def _adopt_ec2(machines: Machines, name: str, driver: dict[str, Any], options: HostOptions,
               progress: Progress) -> Machine:
    """A native ``aws`` entry for Docker Machine's instance, once EC2 shows it (nothing is created or changed)."""
    validate_name(name)
    flags = {key: driver[field] for field, key in EC2_FLAGS.items() if driver.get(field) not in (None, "", 0)}
    flags["ssh_keypath"] = str(machines.store.machine_dir(name) / "id_rsa")
    driver_class = registry.get("aws")
    config = {**driver_class.flag_defaults(), **flags}
    adopted = driver_class(name, str(machines.store.machine_dir(name)), config, host_options=options)
    adopted.discovered["instance_id"] = driver["InstanceId"]
    with progress.phase("Finding the EC2 instance"):
        state = adopted.state()
    if state is State.NOT_FOUND:
        raise UsageError(f"{name}: EC2 instance {driver['InstanceId']} no longer exists in {config['region']}")
    record = new_record(name, "aws", dict(adopted.flag_values), options.to_record())
    record["driver_state"] = dict(adopted.discovered)
    machines.store.reserve(record)
    return Machine(machines.store, machines.store.load(name), driver=adopted, provisioner=machines.provisioner)
