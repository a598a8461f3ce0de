"""Commands that reach into machines: ssh and scp."""

from __future__ import annotations

import subprocess
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
        args: Annotated[
            list[str] | None,
            typer.Argument(help="ssh options (-L, -R, -D, -A, -t, -T, -N), then the command (a shell when omitted)."),
        ] = None,
        native: Annotated[
            bool, typer.Option("--native", help="Run the system ssh (any ssh option) with the pinned host key.")
        ] = False,
        filters: FilterOption = None,
    ) -> None:
        """Log in to a machine (a shell on a PTY) or run one command, with OpenSSH's forwarding options; its exit
        status is passed through.

        With --filter (before the command: ``machines ssh --filter label=x -- CMD``) the command runs on every
        selected machine at once; their output lines come prefixed with the machine's name.
        """
        from machines import sshconfig

        if filters:
            _ssh_fleet(filters, [word for word in [name or "", *(args or [])] if word])
            return
        if name is None:
            raise UsageError("give a machine name, or --filter and a command")
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
