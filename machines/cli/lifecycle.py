"""Commands that change machines: start, stop, restart, kill, rm (each on several machines at once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from machines import swarm
from machines.cli.common import FilterOption, err_console, for_each_machine, machines, selected
from machines.errors import ExitStatus
from machines.machine import Machines
from machines.progress import Progress

Names = Annotated[list[str] | None, typer.Argument(help="Machine names (acted on in parallel).")]


def _lifecycle_command(app: typer.Typer, verb: str, action: Callable[[Machines, str, Progress], None], doc: str) -> None:
    def command(names: Names = None, filters: FilterOption = None) -> None:
        library = machines()
        for_each_machine(selected(names, filters), lambda name, progress: action(library, name, progress),
                         report=bool(filters))

    command.__doc__ = doc
    app.command(verb, no_args_is_help=True)(command)


def register(app: typer.Typer) -> None:
    _lifecycle_command(app, "start", Machines.start, "Start stopped machines (and their runtime).")
    _lifecycle_command(app, "stop", Machines.stop, "Stop machines gracefully.")
    _lifecycle_command(app, "restart", Machines.restart, "Restart machines (start them if stopped).")
    _lifecycle_command(app, "kill", Machines.kill, "Stop machines at once, without a graceful shutdown.")

    @app.command("rm", no_args_is_help=True)
    def remove(
        names: Names = None,
        filters: FilterOption = None,
        force: Annotated[
            bool, typer.Option("--force", "-f", help="Forget machines even when their resources cannot be removed.")
        ] = False,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    ) -> None:
        """Remove machines: their resources, then their store entries (swarm members leave their swarm first)."""
        library = machines()
        names = selected(names, filters)
        for name in names:
            library.get(name)  # every name must exist before anything is removed
        if not (yes or force):
            err_console().print(f"About to remove {', '.join(names)}")
            if not typer.confirm("Are you sure?", err=True):
                raise typer.Exit(int(ExitStatus.ERROR))
        for_each_machine(names, lambda name, progress: swarm.remove(library, name, force=force, progress=progress),
                         report=bool(filters))
