"""One machine made with ``machines create`` (local driver) and a real Debian 12 image on it, made the documented way
(debootstrap, ``tar -c . | docker import -``), shared by the tests of this folder and removed afterwards."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from machines.drivers.nshost import Bridge
from tests.support.cli import DOCKER, machines, with_env
from tests.support.debian_image import debian_rootfs_tar
from tests.support.hosts import unique_name

IMAGE = "machines-test/debian:12"
COMPOSE = "/usr/bin/docker-compose"
# requests lets these override DOCKER_CERT_PATH's CA (psf/requests#3829): docker-compose must not see them
NO_CA_OVERRIDE = "env -u REQUESTS_CA_BUNDLE -u CURL_CA_BUNDLE"
CLASSIC_BUILD = "DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0"  # no buildx here: the classic builder


@dataclass
class World:
    """A provisioned machine with the Debian image, driven as a user would: ``eval "$(machines env NAME)"``."""

    store: Path
    name: str
    address: str

    def run(self, command: str, stdin: bytes | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        return with_env(self.store, self.name, command, stdin=stdin, timeout=timeout)

    def docker(self, args: str, timeout: float = 240) -> str:
        """stdout of ``docker ARGS`` on the machine; a non-zero exit fails the test with its stderr."""
        result = self.run(f"{CLASSIC_BUILD} {DOCKER} {args}", timeout=timeout)
        assert result.returncode == 0, f"docker {args} exited {result.returncode}: {result.stderr.decode()}"
        return result.stdout.decode()

    def compose(self, folder: Path, args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.run(f"cd {folder} && {NO_CA_OVERRIDE} {CLASSIC_BUILD} {COMPOSE} {args}", timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, test_bridge: Bridge) -> Iterator[World]:
    tar = debian_rootfs_tar()  # first: without Debian's mirror the test fails here, saying so
    store = tmp_path_factory.mktemp("realworld") / "store"
    name = unique_name("rw")
    machines(store, "create", "-d", "local", "--local-bridge", test_bridge.name, "--local-subnet", test_bridge.subnet,
             name, timeout=600)
    try:
        address = machines(store, "ip", name).stdout.strip()
        instance = World(store, name, address)
        imported = instance.run(f"{DOCKER} import - {IMAGE} < {tar}", timeout=900)
        assert imported.returncode == 0, imported.stderr.decode()
        yield instance
    finally:
        machines(store, "rm", "-f", "-y", name)
    assert not (store / "machines" / name).exists()
