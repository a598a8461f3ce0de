"""Commands that reach into machines: ssh and scp."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from machines.cli.common import echo, machines, settings


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
    def ssh(
        name: str,
        command: Annotated[list[str] | None, typer.Argument(help="Command to run; a shell when omitted.")] = None,
    ) -> None:
        """Log in to a machine (a shell on a PTY) or run one command; its exit status is passed through."""
        if command and command[0] == "--":  # ``machines ssh NAME -- CMD`` like ssh
            command = command[1:]
        connection = machines().get(name).ssh()
        try:
            if command:
                stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer
                status = connection.stream(" ".join(command), stdin=stdin)
            else:
                if not sys.stdin.isatty():
                    raise typer.BadParameter("an interactive shell needs a terminal; give a command to run")
                status = connection.interactive()
        finally:
            connection.close()
        raise typer.Exit(status)

    @app.command()
    def scp(
        source: Annotated[str, typer.Argument(help="[MACHINE:]PATH")],
        destination: Annotated[str, typer.Argument(help="[MACHINE:]PATH")],
        recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Copy directories.")] = False,
    ) -> None:
        """Copy files between this computer and machines, or between two machines."""
        from machines import transfer  # with paramiko, only when copying

        report = (lambda line: echo(line)) if settings.verbose else None
        transfer.copy(machines(), source, destination, recursive=recursive, report=report)
