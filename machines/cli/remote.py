"""Commands that reach into machines: ssh and scp."""

from __future__ import annotations

import subprocess
from typing import Annotated

import typer

from machines.cli.common import echo, machines, settings


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
    def ssh(
        name: str,
        args: Annotated[
            list[str] | None,
            typer.Argument(help="ssh options (-L, -R, -D, -A, -t, -T, -N), then the command (a shell when omitted)."),
        ] = None,
        native: Annotated[
            bool, typer.Option("--native", help="Run the system ssh (any ssh option) with the pinned host key.")
        ] = False,
    ) -> None:
        """Log in to a machine (a shell on a PTY) or run one command, with OpenSSH's forwarding options; its exit
        status is passed through."""
        from machines import sshconfig

        options = sshconfig.parse(args or [])
        machine = machines().get(name)
        if native or options.native:
            command = sshconfig.native_command(machine, options)
            raise typer.Exit(subprocess.call(command))
        connection = machine.ssh()
        try:
            status = sshconfig.Session(connection, options).run()
        finally:
            connection.close()
        raise typer.Exit(status)

    @app.command()
    def scp(
        source: Annotated[str, typer.Argument(help="[MACHINE:]PATH")],
        destination: Annotated[str, typer.Argument(help="[MACHINE:]PATH")],
        recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Copy directories.")] = False,
        delta: Annotated[
            bool, typer.Option("--delta", help="rsync over SSH: send only what changed (rsync on both sides).")
        ] = False,
    ) -> None:
        """Copy files between this computer and machines, or between two machines."""
        if delta:
            from machines import sshconfig

            raise typer.Exit(subprocess.call(sshconfig.delta_command(machines(), source, destination, recursive)))
        from machines import transfer  # with paramiko, only when copying

        report = (lambda line: echo(line)) if settings.verbose else None
        transfer.copy(machines(), source, destination, recursive=recursive, report=report)
