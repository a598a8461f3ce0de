"""CLI commands of bootstrap: env, config, regenerate-certs, provision, upgrade. Each parses, calls the library,
prints; the work is in ``bootstrap``, imported inside the commands so that other commands do not pay for paramiko
and cryptography at start-up."""

from __future__ import annotations

from typing import Callable, Optional

import typer

from machines.cli import common
from machines.errors import StateError
from machines.machine import Machine
from machines.progress import Progress

ENV_KEYS = ("DOCKER_TLS_VERIFY", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_MACHINE_NAME")


def _provisioned(machine: Machine) -> None:
    if not machine.runtime:
        raise StateError(f"machine {machine.name!r} has no runtime yet: run 'machines provision {machine.name}'")


def env_variables(machine: Machine, *, ssh: bool, unset: bool, no_proxy: bool) -> dict[str, str | None]:
    """The variables ``env`` sets (or unsets): TLS to port 2376, or the local socket of the SSH forwarder."""
    from bootstrap import certs as certificates
    from bootstrap import forwarder, shellenv

    if unset:
        variables: dict[str, str | None] = dict.fromkeys(ENV_KEYS)
        if no_proxy:
            variables.update(NO_PROXY=None, no_proxy=None)
        return variables
    _provisioned(machine)
    ssh = ssh or machine.runtime.get("api") == "ssh"
    if ssh:
        socket_path = forwarder.ensure(machine.store.root, machine.name, machine.dir)
        return {
            "DOCKER_TLS_VERIFY": None,
            "DOCKER_HOST": f"unix://{socket_path}",
            "DOCKER_CERT_PATH": None,
            "DOCKER_MACHINE_NAME": machine.name,
        }
    ip = machine.ip()
    store = certificates.StoreCerts(machine.store.root / "certs")
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
        value = shellenv.no_proxy_value(ip)
        variables.update(NO_PROXY=value, no_proxy=value)
    return variables


def _for_each(names: list[str], verbose: bool, action: Callable[[Machine, Progress], None]) -> None:
    """Run ``action`` on every named machine at once (one progress line per phase, one error line per failure)."""
    common.settings.verbose = common.settings.verbose or verbose
    store = common.machines()

    def work(name: str, progress: Progress) -> None:
        machine = store.get(name)
        try:
            action(machine, progress)
        finally:
            machine.close()

    common.for_each_machine(names, work)


def register(app: typer.Typer) -> None:
    """Add bootstrap's commands to the ``machines`` CLI."""

    @app.command()
    def env(
        name: str = typer.Argument(..., help="Machine name."),
        shell: Optional[str] = typer.Option(None, "--shell", help="bash, zsh, sh, fish, tcsh, powershell or cmd (default: from $SHELL)."),
        unset: bool = typer.Option(False, "--unset", "-u", help="Print commands that unset the variables instead."),
        no_proxy: bool = typer.Option(False, "--no-proxy", help="Add the machine's IP to NO_PROXY/no_proxy."),
        ssh: bool = typer.Option(False, "--ssh", help="Point DOCKER_HOST at a local socket forwarded over SSH."),
    ) -> None:
        """Print the shell commands that point docker, docker-py and docker-compose at a machine."""
        from bootstrap import forwarder, shellenv

        machine = common.machines().get(name)
        if unset and (ssh or machine.runtime.get("api") == "ssh"):
            forwarder.stop(machine.dir)
        variables = env_variables(machine, ssh=ssh, unset=unset, no_proxy=no_proxy)
        chosen = shell or shellenv.detect_shell()
        flags = [("--ssh", ssh), ("--unset", unset), ("--no-proxy", no_proxy), (f"--shell {shell}", bool(shell))]
        command = " ".join(["machines env", *(flag for flag, given in flags if given), name])
        common.echo(shellenv.render(variables, chosen, command).rstrip("\n"))

    @app.command()
    def config(name: str = typer.Argument(..., help="Machine name.")) -> None:
        """Print the docker client flags that reach a machine over mutual TLS."""
        from bootstrap.certs import CA_CERT, CLIENT_CERT, CLIENT_KEY

        machine = common.machines().get(name)
        _provisioned(machine)
        if machine.runtime.get("api") == "ssh":
            raise StateError(f"machine {name!r} has no TCP API (created with --api ssh): use 'machines env --ssh {name}'")
        directory = machine.dir
        common.echo(
            f"--tlsverify\n--tlscacert={directory / CA_CERT}\n--tlscert={directory / CLIENT_CERT}\n"
            f"--tlskey={directory / CLIENT_KEY}\n-H={machine.url()}"
        )

    @app.command("regenerate-certs")
    def regenerate_certs(
        names: list[str] = typer.Argument(..., help="Machine names."),
        force: bool = typer.Option(False, "--force", "-f", help="Do not ask for confirmation."),
        client_certs: bool = typer.Option(False, "--client-certs", help="Also replace the store's CA and client certificate."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the details of each phase."),
    ) -> None:
        """Issue new server certificates (for the current IPs) and restart the runtime; containers keep running."""
        from bootstrap import certs as certificates
        from bootstrap import provision

        if not force:
            question = "Regenerate the TLS certificates of " + ", ".join(names)
            if client_certs:
                question += " and the store's CA and client certificate (every other machine will need it too)"
            typer.confirm(question + "?", abort=True)
        if client_certs:
            certificates.ensure_store_certs(common.machines().store.root, rotate=True)
        _for_each(names, verbose, provision.regenerate_certs)

    @app.command("provision")
    def provision_command(
        names: list[str] = typer.Argument(..., help="Machine names."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the details of each phase."),
    ) -> None:
        """Re-run provisioning: install or repair the runtime, certificates and service (idempotent)."""
        from bootstrap import provision

        _for_each(names, verbose, provision.provision)

    @app.command()
    def upgrade(
        names: list[str] = typer.Argument(..., help="Machine names."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the details of each phase."),
    ) -> None:
        """Upload this version's runtime and restart it; containers, images and volumes stay."""
        from bootstrap import provision

        _for_each(names, verbose, provision.upgrade)
