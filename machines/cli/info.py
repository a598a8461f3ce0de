"""Commands that read: ls, inspect, status, ip, url, active, version."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from machines import inventory
from machines.cli import light
from machines.cli.common import echo, machines
from machines.errors import MachineNotFoundError, MachinesError, StateError
from machines.machine import Machine

TimeoutOption = Annotated[
    float, typer.Option("--timeout", "-t", help="Seconds to wait for the machines' states.")
]
COLUMNS = (("NAME", "name"), ("ACTIVE", "active"), ("DRIVER", "driver"), ("STATE", "state"), ("URL", "url"),
           ("RUNTIME", "runtime"), ("ERRORS", "error"))


def _table(rows: list[inventory.MachineInfo]) -> list[str]:
    cells = [[title for title, _ in COLUMNS]]
    for row in rows:
        values = row.as_dict()
        values["active"] = "*" if row.active else "-"
        cells.append([str(values[field]) for _, field in COLUMNS])
    widths = [max(len(line[index]) for line in cells) for index in range(len(COLUMNS))]
    return ["   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells]


def public_record(machine: Machine) -> dict[str, Any]:
    """The machine's record for ``inspect``, with secret driver flags masked (all of them if the driver is gone)
    and proxy passwords in the engine's environment too."""
    record: dict[str, Any] = json.loads(json.dumps(machine.record))
    try:
        record["driver"] = machine.driver.public_config()
    except MachinesError:
        record["driver"] = {key: "<hidden>" for key in record.get("driver") or {}}
    engine = (record.get("host_options") or {}).get("engine")
    if engine:
        engine["env"] = machine.host_options.engine.public_env()
    return record


def register(app: typer.Typer) -> None:
    @app.command("ls")
    def list_machines(
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only names.")] = False,
        filters: Annotated[
            list[str] | None,
            typer.Option("--filter", help="driver=, state=, name= (regex), label=KEY=VALUE or swarm=NAME; repeatable."),
        ] = None,
        timeout: TimeoutOption = inventory.DEFAULT_LS_TIMEOUT,
        template: Annotated[
            str | None, typer.Option("--format", "-f", help="'json', or a template like '{name} {state}'.")
        ] = None,
    ) -> None:
        """List machines with their states (queried in parallel)."""
        wanted = inventory.parse_filters(filters or [])
        all_machines = machines().list()
        if quiet and not wanted:  # names only: no need to ask any driver
            for machine in all_machines:
                echo(machine.name)
            return
        rows = [row for row in inventory.describe_all(all_machines, timeout) if inventory.matches(row, wanted)]
        if quiet:
            lines = [row.name for row in rows]
        elif template:
            lines = inventory.render(rows, template)
        else:
            lines = _table(rows)
        for line in lines:
            echo(line)

    @app.command()
    def inspect(
        name: str,
        template: Annotated[
            str | None, typer.Option("--format", "-f", help="A template over the record, e.g. '{driver_name}'.")
        ] = None,
    ) -> None:
        """Show a machine's record as JSON (secrets masked)."""
        record = public_record(machines().get(name))
        echo(inventory.format_template(template, record) if template else json.dumps(record, indent=2, sort_keys=True))

    @app.command()
    def status(name: str) -> None:
        """Print a machine's state: Running, Stopped, Error..."""
        echo(str(machines().get(name).state()))

    @app.command()
    def ip(names: list[str]) -> None:
        """Print the IP address of each machine."""
        library = machines()
        for name in names:
            echo(library.get(name).ip())

    @app.command()
    def url(name: str) -> None:
        """Print the URL of a machine's runtime API."""
        echo(machines().get(name).url())

    @app.command()
    def active(timeout: TimeoutOption = inventory.DEFAULT_LS_TIMEOUT) -> None:
        """Print the running machine that $DOCKER_HOST points at."""
        row = inventory.active_machine(machines().list(), timeout)
        if row is None:
            raise MachineNotFoundError("no active machine: $DOCKER_HOST points at none of them (or it is not running)")
        echo(row.name)

    @app.command()
    def version(name: Annotated[str | None, typer.Argument(help="Show this machine's runtime version.")] = None) -> None:
        """Print the version of machines, or of a machine's runtime."""
        if name is None:
            echo(light.version_line())
            return
        runtime_version = machines().get(name).runtime.get("version")
        if not runtime_version:
            raise StateError(f"machine {name!r} has no runtime installed (created with --no-provision?)")
        echo(str(runtime_version))
