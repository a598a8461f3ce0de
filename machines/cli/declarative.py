"""Machines described elsewhere: ``apply -f FILE`` and ``schema`` (a file), ``import-docker-machine`` (a Docker
Machine store)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import typer

from machines import declarative, dockermachine
from machines.cli import common
from machines.errors import ExitStatus


def register(app: typer.Typer) -> None:
    @app.command("apply")
    def apply_command(
        file: Path = typer.Option(..., "--file", "-f", help="The machines file (YAML; see 'machines schema')."),
        plan_only: bool = typer.Option(False, "--plan", help="Print what would change and exit 2 if anything would."),
        prune: bool = typer.Option(False, "--prune", help="Remove machines with the file's label it no longer lists."),
    ) -> None:
        """Create, change (and with --prune remove) machines so that the store matches the file."""
        library = common.machines()
        label, wanted = declarative.load(file)
        steps = declarative.plan(library, label, wanted, prune=prune)
        if not steps:
            common.echo("nothing to change")
            return
        if plan_only:
            common.echo("\n".join(line for step in steps for line in step.lines()))
            raise typer.Exit(int(ExitStatus.USAGE))  # 2: something would change (as terraform plan -detailed-exitcode)
        cancelled = threading.Event()
        for wave in declarative.waves(steps):  # swarm members after the manager the same file creates
            by_name = {step.name: step for step in wave}
            common.for_each_machine(
                list(by_name),
                lambda name, progress: declarative.apply_step(library, by_name[name], progress, cancelled),
                cancelled=cancelled,
            )
        common.echo("\n".join(line for step in steps for line in step.lines()))

    @app.command("schema")
    def schema_command() -> None:
        """Print the JSON Schema of the 'machines apply' file (for editors' completion and checks)."""
        common.echo(json.dumps(declarative.schema(), indent=2))

    @app.command("import-docker-machine")
    def import_docker_machine(
        names: list[str] = typer.Argument(None, help="Machines to import (default: all of them)."),
        source: Path = typer.Option(dockermachine.DEFAULT_SOURCE, "--from", envvar="MACHINE_STORAGE_PATH",
                                    help="Docker Machine's storage path (MACHINE_STORAGE_PATH)."),
    ) -> None:
        """Adopt Docker Machine's machines as generic entries with their keys and certificates; hosts unchanged."""
        library = common.machines()
        chosen = names or dockermachine.names(source)
        common.for_each_machine(
            chosen, lambda name, progress: dockermachine.import_machine(library, source, name, progress))
        common.echo("\n".join(chosen))
