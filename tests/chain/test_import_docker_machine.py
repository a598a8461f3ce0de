"""Issue 14: a Docker Machine store, laid out as Docker Machine writes it, is imported; its machines answer
``machines ls`` and ``docker version``, and their hosts are not changed.

The "Docker Machine host" is a local machine of another store: like a host Docker Machine provisioned, it serves the
Docker API over TLS on 2376 with a server certificate of that store's CA, which the generated Docker Machine store
carries as its own CA.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from machines.drivers.nshost import Bridge
from machines.machine import Machines
from machines.store import KEY_FILE
from tests.support.cli import machines, with_env
from tests.support.hosts import unique_name


def _docker_machine_store(source_store: Path, name: str, ip: str, folder: Path, imported: dict[str, str]) -> None:
    """``~/.docker/machine`` as Docker Machine 0.16 writes it, one machine per (name, DriverName) of ``imported``."""
    certs = folder / "certs"
    certs.mkdir(parents=True)
    for file in ("ca.pem", "ca-key.pem", "cert.pem", "key.pem"):
        shutil.copy(source_store / "certs" / file, certs / file)
    machine_dir = source_store / "machines" / name
    for dm_name, driver_name in imported.items():
        target = folder / "machines" / dm_name
        target.mkdir(parents=True)
        shutil.copy(machine_dir / KEY_FILE, target / "id_rsa")
        for file in ("ca.pem", "cert.pem", "key.pem", "server.pem", "server-key.pem"):
            shutil.copy(machine_dir / file, target / file)
        config = {
            "ConfigVersion": 3,
            "Driver": {"IPAddress": ip, "MachineName": dm_name, "SSHUser": "root", "SSHPort": 22,
                       "SSHKeyPath": str(target / "id_rsa"), "StorePath": str(folder), "SwarmMaster": False,
                       "SwarmHost": "", "SwarmDiscovery": "", "EnginePort": 2376, "SSHKey": ""},
            "DriverName": driver_name,
            "HostOptions": {
                "Driver": "", "Memory": 0, "Disk": 0,
                "EngineOptions": {"ArbitraryFlags": [], "Dns": None, "GraphDir": "", "Env": ["TZ=UTC"],
                                  "Ipv6": False, "InsecureRegistry": ["10.0.0.0/8"], "Labels": ["origin=dm"],
                                  "LogLevel": "", "StorageDriver": "", "SelinuxEnabled": False, "TlsVerify": True,
                                  "RegistryMirror": [], "InstallURL": "https://get.docker.com"},
                "SwarmOptions": {"IsSwarm": False, "Address": "", "Discovery": "", "Agent": False, "Master": False},
                "AuthOptions": {"CertDir": str(certs), "CaCertPath": str(certs / "ca.pem"),
                                "CaPrivateKeyPath": str(certs / "ca-key.pem"), "ClientKeyPath": str(certs / "key.pem"),
                                "ClientCertPath": str(certs / "cert.pem"), "ServerCertPath": str(target / "server.pem"),
                                "ServerKeyPath": str(target / "server-key.pem"), "StorePath": str(target)},
            },
            "Name": dm_name,
        }
        (target / "config.json").write_text(json.dumps(config, indent=4))


def test_docker_machine_store_is_imported_and_its_machines_answer(
    store: Path, test_bridge: Bridge, tmp_path: Path
) -> None:
    host = unique_name("dm")
    machines(store, "create", "-d", "local", "--local-bridge", test_bridge.name, "--local-subnet", test_bridge.subnet,
             host)
    ip = Machines(store).get(host).ip()
    source = tmp_path / "docker-machine"
    web, aws, odd = unique_name("dmw"), unique_name("dma"), unique_name("dmx")
    _docker_machine_store(store, host, ip, source, {web: "generic", aws: "amazonec2", odd: "hyperv"})
    pid_before = machines(store, "ssh", host, "cat /var/run/machines-runtime.pid").stdout
    imported = tmp_path / "imported"
    try:
        refused = machines(imported, "import-docker-machine", "--from", str(source), odd, check=False)
        assert refused.returncode != 0 and "driver 'hyperv' cannot be imported" in refused.stderr
        machines(imported, "import-docker-machine", "--from", str(source), web, aws)

        rows = machines(imported, "ls", "--format", "{name} {driver} {state}").stdout.splitlines()
        assert sorted(rows) == sorted([f"{web} generic Running", f"{aws} generic Running"])
        for name in (web, aws):
            result = with_env(imported, name, "docker version --format '{{.Server.Os}}'")
            assert result.returncode == 0 and result.stdout == b"linux\n", result.stderr
        options = Machines(imported).get(web).host_options
        assert options.labels == ("origin=dm",) and options.engine.insecure_registries == ("10.0.0.0/8",)
        assert (imported / "machines" / web / "ca.pem").stat().st_mode & 0o777 == 0o600

        provision = machines(imported, "provision", web, check=False)
        assert provision.returncode != 0 and "imported from docker-machine" in provision.stderr
        changed = machines(imported, "set", web, "--engine-label", "x=y", check=False)
        assert changed.returncode != 0 and "imported from docker-machine" in changed.stderr
        assert "failed too" not in changed.stderr and Machines(imported).get(web).host_options.labels == ("origin=dm",)
        assert machines(store, "ssh", host, "cat /var/run/machines-runtime.pid").stdout == pid_before  # untouched
    finally:
        left = [machine.name for machine in Machines(imported).list()]
        if left:
            machines(imported, "rm", "-y", *left)  # generic entries: forgotten, hosts left alone
