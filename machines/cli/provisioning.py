"""Commands that install and reach the engine: env, config, regenerate-certs, provision, upgrade.

Each parses, calls ``Machine``/``Machines`` (whose provisioner does the work) and prints.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from machines import shellenv, swarm
from machines.cli import common, reach
from machines.machine import Machine
from machines.progress import Progress


def _for_each(names: list[str], verbose: bool, action: Callable[[Machine, Progress], None], *,
              report: bool = False) -> None:
    """Run ``action`` on every named machine at once (one progress line per phase, one error line per failure;
    ``report``: one result line per machine)."""
    common.settings.verbose = common.settings.verbose or verbose
    store = common.machines()

    def work(name: str, progress: Progress) -> None:
        machine = store.get(name)
        try:
            action(machine, progress)
        finally:
            machine.close()

    common.for_each_machine(names, work, report=report)


def register(app: typer.Typer) -> None:
    """Add the provisioning commands to the ``machines`` CLI."""

    @app.command()
    def env(
        name: str = typer.Argument(..., help="Machine name."),
        shell: str | None = typer.Option(None, "--shell", help="bash, zsh, sh, fish, tcsh, powershell or cmd (default: from $SHELL)."),
        unset: bool = typer.Option(False, "--unset", "-u", help="Print commands that unset the variables instead."),
        no_proxy: bool = typer.Option(False, "--no-proxy", help="Add the machine's IP to NO_PROXY/no_proxy."),
        ssh: bool = typer.Option(False, "--ssh", help="Point DOCKER_HOST at a local socket forwarded over SSH."),
        context: bool = typer.Option(False, "--context", help="Create a docker context NAME; set DOCKER_CONTEXT."),
        ports: str | None = typer.Option(None, "--ports", help="'auto': published ports on 127.0.0.1 here."),
        in_swarm: bool = typer.Option(False, "--swarm", help="NAME is a swarm or one of its managers: point at a "
                                      "manager of it that answers (for docker node, service and stack)."),
    ) -> None:
        """Print the shell commands that point docker, docker-py and docker-compose at a machine."""
        library = common.machines()
        if in_swarm:  # --unset needs no live manager: any will do
            target = swarm.managers(library, name)[1][0] if unset else swarm.reachable_manager(library, name)
        else:
            target = library.get(name)
        variables = target.env(ssh=ssh, unset=unset, no_proxy=no_proxy)
        if ports is not None or context:
            variables = reach.env_extras(target, variables, ports=ports, context=context, unset=unset)
        chosen = shell or shellenv.detect_shell()
        flags = [("--swarm", in_swarm), ("--ssh", ssh), ("--unset", unset), ("--no-proxy", no_proxy),
                 (f"--shell {shell}", bool(shell)), ("--context", context), (f"--ports {ports}", ports is not None)]
        command = " ".join(["machines env", *(flag for flag, given in flags if given), name])
        common.echo(shellenv.render(variables, chosen, command).rstrip("\n"))

    @app.command()
    def config(name: str = typer.Argument(..., help="Machine name.")) -> None:
        """Print the docker client flags that reach a machine over mutual TLS."""
        common.echo("\n".join(common.machines().get(name).client_flags()))

    @app.command("regenerate-certs")
    def regenerate_certs(
        names: list[str] | None = typer.Argument(None, help="Machine names."),
        filters: common.FilterOption = None,
        force: bool = typer.Option(False, "--force", "-f", help="Do not ask for confirmation."),
        client_certs: bool = typer.Option(False, "--client-certs", help="Also replace the store's CA and client certificate."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the details of each phase."),
    ) -> None:
        """Issue new server certificates (for the current IPs) and restart the runtime; containers keep running."""
        names = common.selected(names, filters)
        if not force:
            question = "Regenerate the TLS certificates of " + ", ".join(names)
            if client_certs:
                question += " and the store's CA and client certificate (every other machine will need it too)"
            typer.confirm(question + "?", abort=True)
        if client_certs:
            common.machines().rotate_client_certs()
        _for_each(names, verbose, Machine.regenerate_certs, report=bool(filters))

    @app.command("provision")
    def provision_command(
        names: list[str] | None = typer.Argument(None, help="Machine names."),
        filters: common.FilterOption = None,
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the details of each phase."),
    ) -> None:
        """Re-run provisioning: install or repair the runtime, certificates and service (idempotent)."""
        _for_each(common.selected(names, filters), verbose, Machine.provision, report=bool(filters))

    @app.command()
    def upgrade(
        names: list[str] | None = typer.Argument(None, help="Machine names."),
        filters: common.FilterOption = None,
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the details of each phase."),
    ) -> None:
        """Upgrade the engine (this version's runtime; Docker Engine's package) and restart it; containers, images
        and volumes stay."""
        _for_each(common.selected(names, filters), verbose, Machine.upgrade, report=bool(filters))
