"""Fixtures of the Swarm mode tests: a store whose ``local`` machines run Debian's Docker Engine.

Inside ``local`` hosts dockerd runs with ``--engine-opt iptables=false ip-masq=false bridge=none`` (test-world.md):
with its defaults it would change this machine's iptables. Its data root is the host's plain ``/data`` (overlay2
cannot sit on the host's overlay root). Every machine a test makes is removed at the end, pass or fail.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from machines import Machines
from machines.drivers.nshost import Bridge
from tests.support.cli import DOCKER, MACHINES, busybox_rootfs, machines

ENGINE_FLAGS = ("--engine", "docker", "--runtime-data-root", "/data/docker", "--engine-opt", "iptables=false",
                "--engine-opt", "ip-masq=false", "--engine-opt", "bridge=none")
IMAGE = "swarmbox:1"


class Fleet:
    """``machines`` on one store (local hosts on this worker's bridge) and the docker CLI pointed by ``env``."""

    def __init__(self, store: Path, bridge: Bridge) -> None:
        self.store = store
        self.tag = f"{os.getpid() % 1000}{uuid.uuid4().hex[:4]}"
        self.env = {**os.environ, "MACHINES_LOCAL_BRIDGE": bridge.name, "MACHINES_LOCAL_SUBNET": bridge.subnet}
        for key in ("MACHINES_DRIVER", "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT",
                    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            self.env.pop(key, None)

    def name(self, prefix: str) -> str:
        return f"{prefix}{self.tag}"

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return machines(self.store, *args, check=check, env=self.env, timeout=300)

    def docker(self, env_args: str, command: str, *, check: bool = True,
               stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """``command`` in bash after ``eval "$(machines env ENV_ARGS)"`` (``--swarm CLUSTER`` or a machine name)."""
        script = (f'eval "$({MACHINES} --storage-path {self.store} env --shell bash {env_args})" && '
                  f'docker() {{ {DOCKER} "$@"; }} && {command}')
        result = subprocess.run(["bash", "-c", script], input=stdin, capture_output=True, timeout=300, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"{command!r} on {env_args} exited {result.returncode}: {result.stderr.decode()}")
        return result

    def load_busybox(self, name: str) -> None:
        """Hosts have no registry: the same busybox rootfs, imported under one name on every node."""
        self.docker(name, f"docker import - {IMAGE}", stdin=busybox_rootfs())

    def remove_all(self) -> None:
        """Remove every machine (no swarm leave: the hosts go anyway), so nothing of the test remains."""
        library = Machines(self.store)
        for machine in library.list():
            machine.close()
            library.remove(machine.name, force=True)


@pytest.fixture(scope="module")
def fleet(test_bridge: Bridge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    made = Fleet(tmp_path_factory.mktemp("store"), test_bridge)
    yield made
    made.remove_all()


Docker = Callable[..., subprocess.CompletedProcess[bytes]]
