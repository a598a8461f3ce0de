"""Commands that reach into machines: ssh and scp."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from machines.cli.common import FilterOption, echo, for_each_machine, machines, selected, settings
from machines.errors import StateError, UsageError
from machines.progress import Progress


def _ssh_fleet(filters: list[str], words: list[str]) -> None:
    """``ssh --filter ... -- CMD``: the command on every selected machine at once, one result line each."""
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise UsageError("ssh --filter needs a command: machines ssh --filter KEY=VALUE -- COMMAND")
    library = machines()

    def run(name: str, _progress: Progress) -> None:
        machine = library.get(name)
        try:
            result = machine.ssh().run(" ".join(words), check=False)
        finally:
            machine.close()
        for line in (result.stdout + result.stderr).splitlines():  # as each machine finishes, one write per line
            echo(f"{name}: {line}")
        if not result.ok:
            raise StateError(f"exit status {result.exit_status}")

    for_each_machine(selected(None, filters), run, report=True)


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
    def ssh(
        name: Annotated[str | None, typer.Argument(help="Machine name (none with --filter).")] = None,
        command: Annotated[list[str] | None, typer.Argument(help="Command to run; a shell when omitted.")] = None,
        filters: FilterOption = None,
    ) -> None:
        """Log in to a machine (a shell on a PTY) or run one command; its exit status is passed through.

        With --filter (before the command: ``machines ssh --filter label=x -- CMD``) the command runs on every
        selected machine at once; their output lines come prefixed with the machine's name.
        """
        if filters:
            _ssh_fleet(filters, [word for word in [name or "", *(command or [])] if word])
            return
        if name is None:
            raise UsageError("give a machine name, or --filter and a command")
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
