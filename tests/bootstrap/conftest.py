"""Fixtures of the bootstrap tests: hosts are made here, outside ``machines``, the way a user's existing server
would be, then adopted with the ``generic`` driver; every host, forwarder and machine is removed by finalizers even
when a test fails."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
from bootstrap_hosts import TestHost, forget_neighbour, unique

from bootstrap import forwarder
from drivers.nshost import IsolatedHost, NsHostError
from machines.machine import Machines
from machines.store import generate_ssh_key


@pytest.fixture(scope="module")
def make_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], TestHost]]:
    """Start fresh test hosts; all are removed at the end of the module."""
    made: list[TestHost] = []

    def make(attempts: int = 2) -> TestHost:
        name = unique("bt")
        folder = tmp_path_factory.mktemp(name)
        public = generate_ssh_key(folder, "bootstrap-test")
        host = IsolatedHost.create(str(folder / "host"), name, public)
        forget_neighbour(host)
        try:
            host.start()
        except NsHostError:
            host.remove()
            if attempts <= 1:
                raise
            # Seen under load: sshd listens but no traffic reaches it for 15 s (reported to local).
            return make(attempts - 1)
        except BaseException:
            host.remove()
            raise
        made.append(TestHost(host, folder / "id_ed25519"))
        return made[-1]

    yield make
    for test_host in made:
        test_host.connection.close()
        test_host.host.remove()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machines]:
    machines = Machines(tmp_path_factory.mktemp("store"))
    yield machines
    for machine in machines.list():
        forwarder.stop(machine.dir)
        machine.close()


