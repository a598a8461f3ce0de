"""The one place the default collaborators are chosen: which provisioner serves each machine's engine.

The core (``machines.machine``) is given a ``Provisioner`` and never imports bootstrap; this module, the top of the
dependency graph next to the CLI, gives it ``EngineProvisioners``: our bundled runtime
(``bootstrap.provisioner.RuntimeProvisioner``) for machines created with ``--engine machines`` (the default), Docker
Engine (``bootstrap.dockerengine.DockerEngineProvisioner``) for ``--engine docker``. ``machines.Machines`` is this
module's ``Machines``.
"""

from __future__ import annotations

import os
from typing import Any

from machines import machine
from machines.hostoptions import HostOptions
from machines.progress import Progress
from machines.store import Store


class EngineProvisioners:
    """A ``Provisioner`` that hands each machine to the provisioner of the engine it was created with."""

    def __init__(self, by_engine: dict[str, machine.Provisioner] | None = None) -> None:
        self._by_engine = by_engine or None

    @property
    def by_engine(self) -> dict[str, machine.Provisioner]:
        """The provisioners, made on first use: bootstrap pulls in paramiko and cryptography, which ``version`` and
        ``ls`` never need."""
        if self._by_engine is None:
            from machines.bootstrap.dockerengine import DockerEngineProvisioner
            from machines.bootstrap.provisioner import RuntimeProvisioner

            self._by_engine = {"machines": RuntimeProvisioner(), "docker": DockerEngineProvisioner()}
        return self._by_engine

    def of(self, target: machine.Machine) -> machine.Provisioner:
        return self.by_engine[target.host_options.engine_name]

    def check_options(self, options: HostOptions) -> None:
        self.by_engine[options.engine_name].check_options(options)

    def engine_config(self, options: HostOptions) -> dict[str, Any]:
        return self.by_engine[options.engine_name].engine_config(options)

    def engine_config_on_host(self, target: machine.Machine) -> dict[str, Any] | None:
        return self.of(target).engine_config_on_host(target)

    def provision(self, target: machine.Machine, progress: Progress) -> None:
        self.of(target).provision(target, progress)

    def upgrade(self, target: machine.Machine, progress: Progress) -> None:
        self.of(target).upgrade(target, progress)

    def regenerate_certs(self, target: machine.Machine, progress: Progress) -> None:
        self.of(target).regenerate_certs(target, progress)

    def rotate_client_certs(self, store: Store) -> None:
        """One CA and client certificate per store, whatever the engines: any provisioner rotates it."""
        self.by_engine["machines"].rotate_client_certs(store)

    def env(self, target: machine.Machine, *, ssh: bool, unset: bool, no_proxy: bool) -> dict[str, str | None]:
        return self.of(target).env(target, ssh=ssh, unset=unset, no_proxy=no_proxy)

    def client_flags(self, target: machine.Machine) -> list[str]:
        return self.of(target).client_flags(target)

    def local_docker_hosts(self, target: machine.Machine) -> set[str]:
        return self.of(target).local_docker_hosts(target)

    def release(self, target: machine.Machine) -> None:
        self.of(target).release(target)

    def daemon_log(self, target: machine.Machine) -> str:
        return self.of(target).daemon_log(target)


class Machines(machine.Machines):
    """``machines.machine.Machines`` whose provisioner is chosen by each machine's engine unless one is given."""

    def __init__(
        self, storage_path: str | os.PathLike[str] | None = None, provisioner: machine.Provisioner | None = None
    ) -> None:
        super().__init__(storage_path, provisioner if provisioner is not None else EngineProvisioners())
