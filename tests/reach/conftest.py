"""Local machines for issue 15's tests: one whose API is reachable over SSH only (``--api ssh``, no TCP port open)
and one with the mutual-TLS API, each with the busybox image imported; made once per worker, removed at the end."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from machines.drivers.nshost import Bridge
from tests.support.cli import DOCKER, MACHINES, machines
from tests.support.hosts import TestHost, unique_name

IMAGE = "reach-busybox"


@dataclasses.dataclass
class Reachable:
    """A provisioned local machine of this worker's store."""

    store: Path
    name: str
    env: dict[str, str]

    def cli(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return machines(self.store, *args, check=check, env=self.env, timeout=timeout)

    def docker(self, *args: str, check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """The real docker CLI after ``eval "$(machines env NAME)"``."""
        script = (f'eval "$({MACHINES} --storage-path {self.store} env --shell bash {self.name})" && '
                  f'exec {DOCKER} "$@"')
        result = subprocess.run(["bash", "-c", script, "docker", *args], input=stdin, capture_output=True,
                                timeout=240, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}: {result.stderr.decode()}")
        return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(),
                                           result.stderr.decode())


def _make(store: Path, env: dict[str, str], bridge: Bridge, busybox_tar: bytes, *options: str) -> Reachable:
    name = unique_name("r")
    machines(store, "create", "-d", "local", "--local-bridge", bridge.name, "--local-subnet", bridge.subnet,
             *options, name, env=env, timeout=600)
    machine = Reachable(store, name, env)
    machine.docker("import", "-", IMAGE, stdin=busybox_tar)
    return machine


@pytest.fixture(scope="session")
def reach_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """This process's environment with HOME and DOCKER_CONFIG of the tests (contexts are written there)."""
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker")}
    for variable in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "MACHINES_DRIVER"):
        env.pop(variable, None)
    return env


@pytest.fixture(scope="session")
def ssh_machine(tmp_path_factory: pytest.TempPathFactory, test_bridge: Bridge, busybox_tar: bytes,
                reach_env: dict[str, str]) -> Iterator[Reachable]:
    store = tmp_path_factory.mktemp("reach-ssh") / "store"
    machine = _make(store, reach_env, test_bridge, busybox_tar, "--api", "ssh")
    yield machine
    machine.cli("rm", "-f", "-y", machine.name)


@pytest.fixture(scope="session")
def tls_machine(tmp_path_factory: pytest.TempPathFactory, test_bridge: Bridge, busybox_tar: bytes,
                reach_env: dict[str, str]) -> Iterator[Reachable]:
    store = tmp_path_factory.mktemp("reach-tls") / "store"
    machine = _make(store, reach_env, test_bridge, busybox_tar)
    yield machine
    machine.cli("rm", "-f", "-y", machine.name)


def create_generic(store: Path, host: TestHost, *options: str, name: str = "web") -> None:
    """``machines create -d generic`` adopting test host ``host`` (its key pinned), runtime data on ``/data``."""
    machines(store, "create", "-d", "generic", "--generic-ip-address", host.address, "--generic-ssh-key",
             str(host.key_path), "--generic-ssh-host-key", host.host_public_key, "--runtime-data-root",
             "/data/runtime", *options, name)


def free_port() -> int:
    """A TCP port nothing listens on here now (the kernel's choice, so parallel workers do not collide)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(port: int, path: str = "/") -> str | None:
    """The body 127.0.0.1:PORT answers with, or None when nothing answers there (refused, reset, closed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    except OSError:
        return None
    if not data:
        return None
    return data.partition(b"\r\n\r\n")[2].decode(errors="replace")


def eventually(probe: Callable[[], object], want: Callable[[object], bool], timeout: float = 60) -> object:
    """Poll ``probe`` until ``want`` holds of its value (state changes across processes take a moment); returns
    the last value, so the assertion after shows what was seen."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not want(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = probe()
    return value
