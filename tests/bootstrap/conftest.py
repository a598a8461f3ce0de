"""Fixtures of the bootstrap tests, on the shared test hosts of ``tests/support`` (this worker's bridge).

Hosts are module-scoped so that several tests share one provisioned machine; they are made outside ``machines``,
the way a user's existing server would be, and adopted with the ``generic`` driver. Every host, forwarder and
machine is removed by finalizers even when a test fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from machines import Machines
from machines.bootstrap import forwarder
from machines.drivers.nshost import Bridge
from tests.support.hosts import HostFactory


@pytest.fixture(scope="module")
def make_host(
    test_bridge: Bridge, test_key: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostFactory]:
    """Started test hosts that live until the end of the module."""
    factory = HostFactory(test_bridge, tmp_path_factory.mktemp("hosts"), *test_key)
    yield factory
    factory.cleanup()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machines]:
    """A store of its own; at the end its forwarders are stopped and its local machines removed."""
    machines = Machines(tmp_path_factory.mktemp("store"))
    yield machines
    for machine in machines.list():
        forwarder.stop(machine.dir)
        machine.close()
        if machine.driver_name == "local":
            machines.remove(machine.name, force=True)
