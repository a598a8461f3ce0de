"""Test hosts and helpers for the bootstrap tests: real sshd hosts (``drivers.nshost``) adopted with the generic
driver, and the real ``machines`` and ``docker`` commands."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from drivers.base import SSHDetails
from drivers.nshost import IsolatedHost
from machines.machine import Machine, Machines
from machines.ssh import Connection

REPO = Path(__file__).resolve().parents[2]
MACHINES = str(Path(sys.executable).with_name("machines"))
DOCKER = "/usr/local/bin/docker" if os.path.exists("/usr/local/bin/docker") else "docker"


class TestHost:
    __test__ = False  # not a test class, despite the name

    """An isolated host with sshd, its root key, and a root shell over SSH for test set-up."""

    def __init__(self, host: IsolatedHost, key_path: Path) -> None:
        self.host = host
        self.key_path = key_path
        self.address = host.address
        self.connection = Connection(SSHDetails(host.address, 22, "root", str(key_path)), host.host_public_key, name=host.name)

    def run(self, command: str) -> str:
        return self.connection.run(command).stdout


def forget_neighbour(host: IsolatedHost) -> None:
    """Drop the bridge's ARP entry for a reused address: the MAC of a removed host would be used for seconds."""
    subprocess.run(["ip", "neigh", "flush", "to", host.address, "dev", host.record.bridge], capture_output=True)


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 10000}{uuid.uuid4().hex[:6]}"


def adopt(store: Machines, host: TestHost, *, api: str = "tls", name: str | None = None) -> Machine:
    """``machines create -d generic`` on the test host (provisioning included)."""
    return store.create(
        name or unique("m"),
        "generic",
        {"ip_address": host.address, "ssh_key": str(host.key_path)},
        host_options={"api": api, "tls_san": []},
        ssh_timeout=15,
    )


def cli(store: Machines, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real ``machines`` command on this store."""
    result = subprocess.run(
        [MACHINES, "--storage-path", str(store.store.root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"machines {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def shell(store: Machines, script: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a bash script with ``machines`` (bound to this store) and the docker CLI on PATH."""
    environment = {**os.environ, "MACHINES_STORAGE_PATH": str(store.store.root), **(env or {})}
    environment["PATH"] = f"{Path(MACHINES).parent}:{environment.get('PATH', '')}"
    for key in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        environment.pop(key, None)
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=environment)
