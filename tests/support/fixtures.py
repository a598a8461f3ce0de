"""pytest fixtures for real SSH test hosts and a machines store, loaded for every test by ``tests/conftest.py`` (``pytest_plugins``).

``test_host(name=None, address=None, start=True) -> TestHost`` makes a started host and removes it after the test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from machines.drivers.nshost import Bridge
from tests.support.cli import machines
from tests.support.hosts import (
    HostFactory,
    collect_stale_bridges,
    leftovers,
    made_in_this_process,
    worker_bridge,
    write_key_pair,
)

__all__ = ["machines_store", "test_bridge", "test_host", "test_key"]


@pytest.fixture(scope="session")
def test_bridge() -> Iterator[Bridge]:
    """This worker's bridge; at the end of the session no host, veth or bridge of ours may remain."""
    if os.geteuid() != 0:
        pytest.fail("test hosts need root (network namespaces, mounts)")
    collect_stale_bridges()
    bridge = worker_bridge(os.environ.get("PYTEST_XDIST_WORKER", "main"))
    yield bridge
    ports = os.listdir(f"/sys/class/net/{bridge.name}/brif") if bridge.exists() else []
    bridge.unhold()
    left = [item for record in made_in_this_process for item in leftovers(record)]
    assert not left, f"test hosts left behind: {left}"
    assert not ports, f"test hosts left on bridge {bridge.name}: veths {ports}"
    assert not bridge.exists(), f"bridge {bridge.name} still exists after the session"


@pytest.fixture(scope="session")
def test_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(private key path, public key line) that logs in as root on every test host."""
    return write_key_pair(tmp_path_factory.mktemp("test-key"))


@pytest.fixture
def test_host(test_bridge: Bridge, test_key: tuple[Path, str],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostFactory]:
    """Factory of started test hosts; every host it made is removed after the test, pass or fail."""
    factory = HostFactory(test_bridge, tmp_path_factory.mktemp("hosts"), *test_key)
    yield factory
    factory.cleanup()


@pytest.fixture
def machines_store(tmp_path: Path) -> Iterator[Path]:
    """A store of this test; every machine in it is removed afterwards, pass or fail."""
    root = tmp_path / "store"
    yield root
    folder = root / "machines"
    names = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
    if names:
        machines(root, "rm", "-f", "-y", *names)
    assert not folder.is_dir() or not any(folder.iterdir()), f"machines left in {root}"
