"""``RuntimeProvisioner``: the ``machines.machine.Provisioner`` that installs our bundled runtime.

It gathers what bootstrap offers behind the core's one contract: provisioning and upgrades (``bootstrap.provision``),
certificates for mutual TLS (``bootstrap.certs``) and the SSH-forwarded API socket (``bootstrap.forwarder``).
"""

from __future__ import annotations

from typing import Any

from machines.bootstrap import certs as certificates
from machines.bootstrap import forwarder, service
from machines.bootstrap import provision as provisioning
from machines.errors import StateError, UsageError
from machines.hostoptions import HostOptions
from machines.machine import Machine
from machines.progress import Progress
from machines.runtime import daemonconfig
from machines.shellenv import no_proxy_value
from machines.store import Store

ENV_KEYS = ("DOCKER_TLS_VERIFY", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_MACHINE_NAME")


def _ours(machine: Machine) -> None:
    """A machine imported from Docker Machine runs the Docker Engine it installed: we do not provision it."""
    if machine.runtime.get("imported_from"):
        raise StateError(f"{machine.name} was imported from {machine.runtime['imported_from']} and runs its own Docker "
                         "Engine: machines does not provision, upgrade or re-certify it")


def _provisioned(machine: Machine) -> None:
    if not machine.runtime:
        raise StateError(f"machine {machine.name!r} has no runtime yet: run 'machines provision {machine.name}'")


class RuntimeProvisioner:
    """Our runtime as a service on the host, its API over mutual TLS on TCP 2376 or through SSH."""

    def check_options(self, options: HostOptions) -> None:
        """Our runtime reads dockerd's daemon.json names but implements only some: refuse the rest up front, with
        the daemon's own checks (its log driver is checked when it starts)."""
        try:
            daemonconfig.check(provisioning.runtime_daemon_json(options))
        except daemonconfig.ConfigError as error:
            raise UsageError(f"engine options: {error}") from None

    def engine_config(self, options: HostOptions) -> dict[str, Any]:
        return provisioning.runtime_daemon_json(options)

    def engine_config_on_host(self, machine: Machine) -> dict[str, Any] | None:
        return provisioning.daemon_json_on_host(machine)

    # The module functions are looked up at each call, so tests can replace them (``monkeypatch.setattr``).
    def provision(self, machine: Machine, progress: Progress) -> None:
        _ours(machine)
        provisioning.provision(machine, progress)

    def upgrade(self, machine: Machine, progress: Progress) -> None:
        _ours(machine)
        provisioning.upgrade(machine, progress)

    def regenerate_certs(self, machine: Machine, progress: Progress) -> None:
        _ours(machine)
        provisioning.regenerate_certs(machine, progress)

    def rotate_client_certs(self, store: Store) -> None:
        certificates.ensure_store_certs(store.root, rotate=True)

    def env(self, machine: Machine, *, ssh: bool, unset: bool, no_proxy: bool) -> dict[str, str | None]:
        """TLS to port 2376, or the local socket of the SSH forwarder (``--ssh``, or a machine made with --api ssh).

        ``unset`` also stops the forwarder of such a machine.
        """
        ssh = ssh or machine.runtime.get("api") == "ssh"
        if unset:
            if ssh:
                forwarder.stop(machine.dir)
            variables: dict[str, str | None] = dict.fromkeys(ENV_KEYS)
            if no_proxy:
                variables.update(NO_PROXY=None, no_proxy=None)
            return variables
        _provisioned(machine)
        if ssh:
            socket_path = forwarder.ensure(machine.store.root, machine.name, machine.dir)
            return {
                "DOCKER_TLS_VERIFY": None,
                "DOCKER_HOST": f"unix://{socket_path}",
                "DOCKER_CERT_PATH": None,
                "DOCKER_MACHINE_NAME": machine.name,
            }
        ip = machine.ip()
        # An imported machine's certificates come with it, kept in its folder: from Docker Machine's CA
        # (import-docker-machine), or the exporting store's CA until provisioned from here (`machines import`).
        imported = machine.record.get("imported") or machine.runtime.get("imported_from")
        store = certificates.StoreCerts(machine.dir if imported else machine.store.certs_dir)
        if not certificates.server_cert_valid(machine.dir, store, [ip]):
            raise StateError(
                f"the certificate of {machine.name} is not valid for its address {ip}: "
                f"run 'machines regenerate-certs {machine.name}'"
            )
        variables = {
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_HOST": machine.url(),
            "DOCKER_CERT_PATH": str(machine.dir),
            "DOCKER_MACHINE_NAME": machine.name,
        }
        if no_proxy:
            value = no_proxy_value(ip)
            variables.update(NO_PROXY=value, no_proxy=value)
        return variables

    def client_flags(self, machine: Machine) -> list[str]:
        _provisioned(machine)
        if machine.runtime.get("api") == "ssh":
            raise StateError(
                f"machine {machine.name!r} has no TCP API (created with --api ssh): use 'machines env --ssh {machine.name}'"
            )
        directory = machine.dir
        return [
            "--tlsverify",
            f"--tlscacert={directory / certificates.CA_CERT}",
            f"--tlscert={directory / certificates.CLIENT_CERT}",
            f"--tlskey={directory / certificates.CLIENT_KEY}",
            f"-H={machine.url()}",
        ]

    def local_docker_hosts(self, machine: Machine) -> set[str]:
        return {f"unix://{forwarder.socket_path(machine.dir)}"}

    def release(self, machine: Machine) -> None:
        forwarder.stop(machine.dir)

    def daemon_log(self, machine: Machine) -> str:
        return service.RUNTIME_SERVICE.log
