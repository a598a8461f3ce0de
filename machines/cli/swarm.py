"""``machines swarm init|join|leave|ls``: Swarm mode clusters of machines that run Docker Engine (``machines.swarm``)."""

from __future__ import annotations

from typing import Annotated

import typer

from machines import swarm
from machines.cli.common import echo, for_each_machine, machines
from machines.progress import Progress


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Swarm mode clusters of machines created with --engine docker.", no_args_is_help=True)
    app.add_typer(group, name="swarm")

    @group.command("init")
    def init(
        name: Annotated[str, typer.Argument(help="The machine that becomes the swarm's first manager.")],
        cluster: Annotated[
            str | None, typer.Option("--cluster", help="Name of the swarm \\[default: the machine's name].")
        ] = None,
    ) -> None:
        """Start a swarm on a machine; print its name (for 'machines env --swarm' and ls --filter swarm=)."""
        echo(swarm.init(machines(), name, cluster))

    @group.command("join", no_args_is_help=True)
    def join(
        names: Annotated[list[str], typer.Argument(help="Machines to join (in parallel).")],
        manager: Annotated[str, typer.Option("--manager", "-m", help="A manager of the swarm to join.")],
        role: Annotated[str, typer.Option("--role", help="'worker' or 'manager'.")] = "worker",
    ) -> None:
        """Join machines to the swarm of a manager."""
        library = machines()
        for_each_machine(names, lambda name, _progress: swarm.join(library, name, manager, role))
        for name in names:
            echo(name)

    @group.command("leave", no_args_is_help=True)
    def leave(
        names: Annotated[list[str], typer.Argument(help="Machines that leave their swarm (one after the other).")],
        force: Annotated[bool, typer.Option("--force", "-f", help="Even when quorum would be lost.")] = False,
    ) -> None:
        """Drain machines (their tasks move), demote them, leave the swarm and remove their nodes."""
        library = machines()

        def leave_one(name: str, progress: Progress) -> None:
            with progress.phase("Leaving the swarm"):
                swarm.leave(library, name, force=force, progress=progress)

        for_each_machine(names, leave_one)

    @group.command("ls")
    def ls(cluster: Annotated[str | None, typer.Argument(help="Only this swarm.")] = None) -> None:
        """List the nodes of each swarm as a reachable manager sees them: role, status, availability, manager
        reachability, leader."""
        library = machines()
        names = [cluster] if cluster else list(swarm.clusters(library))
        rows = [["SWARM", "NODE", "MACHINE", "ROLE", "STATUS", "AVAILABILITY", "MANAGER", "LEADER"]]
        for name in names:
            manager = swarm.reachable_manager(library, name)
            for node in swarm.nodes(manager, library):
                rows.append([name, node.hostname, node.machine or "-", node.role, node.status, node.availability,
                             node.manager_status or "-", "*" if node.leader else "-"])  # fmt: skip
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            echo("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
