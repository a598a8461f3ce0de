"""``machines scan``: packages and known vulnerabilities of an image (see machines.scan)."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated

import typer

from machines.cli.common import echo, machines, settings
from machines.store import default_storage_path


class Format(str, enum.Enum):
    table = "table"
    json = "json"
    sarif = "sarif"


class Sbom(str, enum.Enum):
    cyclonedx = "cyclonedx"
    spdx = "spdx"


class Level(str, enum.Enum):
    critical = "critical"
    high = "high"
    medium = "medium"
    low = "low"


def register(app: typer.Typer) -> None:
    @app.command()
    def scan(
        image: Annotated[str, typer.Argument(help="An image reference (from its registry, or with --machine from "
                                                  "that machine), or a docker save / OCI / root filesystem tar.")],
        machine: Annotated[str | None, typer.Option("--machine", help="Scan the image as it is on this machine.")]
        = None,
        db: Annotated[Path | None, typer.Option("--db", metavar="DIR", help="OSV records to match against "
                                                "\\[default: STORAGE/osv].")] = None,
        db_update: Annotated[bool, typer.Option("--db-update", help="Download osv.dev's data for the ecosystems "
                                                "found into the --db folder first (needs internet; MACHINES_OSV_URL "
                                                "names a mirror).")] = False,
        output_format: Annotated[Format, typer.Option("--format", help="Report format.")] = Format.table,
        sbom: Annotated[Sbom | None, typer.Option("--sbom", help="Write an SBOM of the packages instead of a "
                                                  "vulnerability report (or to --sbom-file as well).")] = None,
        sbom_file: Annotated[Path | None, typer.Option("--sbom-file", help="Where --sbom goes.")] = None,
        fail_on: Annotated[Level | None, typer.Option("--fail-on", help="Exit 1 when a vulnerability at or above "
                                                      "this severity remains.")] = None,
        ignore_unfixed: Annotated[bool, typer.Option("--ignore-unfixed", help="Leave out vulnerabilities without a "
                                                     "fixed version.")] = False,
        ignore_file: Annotated[Path | None, typer.Option("--ignore-file", help="Lines 'ID [exp:YYYY-MM-DD] "
                                                         "[# reason]' to leave out.")] = None,
    ) -> None:
        """List an image's packages (dpkg, apk, rpm, Python, npm, Go) and the OSV vulnerabilities they have."""
        from machines.scan import report
        from machines.scan.scan import inventory, vulnerabilities

        target = machines().get(machine) if machine else None
        found = inventory(image, target)
        if sbom is not None:
            text = report.cyclonedx(image, found) if sbom is Sbom.cyclonedx else report.spdx(image, found)
            if sbom_file is None:
                _warn(found.problems)
                echo(text)
                return
            sbom_file.write_text(text + "\n")
        folder = db or (settings.storage_path or default_storage_path()) / "osv"
        result = vulnerabilities(image, found, folder, update=db_update, ignore_unfixed=ignore_unfixed,
                                 ignore_file=ignore_file)
        _warn(found.problems)  # the inventory's, and what matching found (a distribution OSV has no data for)
        for entry in result.expired:
            sys.stderr.write(f"Warning: ignore entry {entry.id} expired on {entry.expires}: it is reported again\n")
        if output_format is Format.json:
            echo(report.to_json(image, found, result.findings, result.ignored))
        elif output_format is Format.sarif:
            echo(report.to_sarif(image, result.findings))
        else:
            echo(report.table(result.findings, found))
        if fail_on is not None and report.at_or_above(result.findings, fail_on.value):
            raise typer.Exit(1)


def _warn(problems: list[str]) -> None:
    for problem in problems:
        sys.stderr.write(f"Warning: {problem}\n")
