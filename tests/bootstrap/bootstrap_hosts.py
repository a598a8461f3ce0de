"""Helpers of the bootstrap tests: adopt a test host as a machine, and run the real ``machines`` and ``docker``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from machines import Machines
from machines.hostoptions import HostOptions
from machines.machine import Machine
from tests.support.hosts import TestHost

REPO = Path(__file__).resolve().parents[2]
MACHINES = str(Path(sys.executable).with_name("machines"))
DOCKER = "/usr/local/bin/docker" if os.path.exists("/usr/local/bin/docker") else "docker"


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 10000}{uuid.uuid4().hex[:6]}"


def adopt(store: Machines, host: TestHost, *, api: str = "tls", name: str | None = None, **options: str) -> Machine:
    """``machines create -d generic`` on the test host (provisioning included), through the library."""
    return store.create(
        name or unique("m"),
        "generic",
        {"ip_address": host.address, "ssh_key": str(host.key_path)},
        host_options=HostOptions(api=api, **options),
        ssh_timeout=15,
    )


def cli(store: Machines, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The real ``machines`` command on this store."""
    result = subprocess.run(
        [MACHINES, "--storage-path", str(store.store.root), *args], capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"machines {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def shell(store: Machines, script: str) -> subprocess.CompletedProcess:
    """Run a bash script with ``machines`` (bound to this store), this python and the docker CLI on PATH."""
    environment = {**os.environ, "MACHINES_STORAGE_PATH": str(store.store.root)}
    environment["PATH"] = f"{Path(MACHINES).parent}:{environment.get('PATH', '')}"
    for key in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        environment.pop(key, None)
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=environment)


def ssh_wrapper(folder: Path, known_hosts: str, key: Path) -> Path:
    """An ``ssh`` for the docker CLI that pins the machine's host key (no TOFU) and uses its key."""
    (folder / "known_hosts").write_text(known_hosts + "\n")
    script = folder / "ssh"
    script.write_text(
        "#!/bin/sh\n"
        f"exec /usr/bin/ssh -F /dev/null -o UserKnownHostsFile={folder / 'known_hosts'} -o StrictHostKeyChecking=yes "
        f'-o IdentitiesOnly=yes -o BatchMode=yes -i {key} "$@"\n'
    )
    script.chmod(0o755)
    return folder
