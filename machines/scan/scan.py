"""One ``machines scan`` run as a library call: inventory, optional SBOM, matching, ignores, the verdict."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from machines.errors import ScanError
from machines.runtime.images.scan import osv
from machines.runtime.images.scan.inventory import Inventory, scan_layers
from machines.scan import osvdata, report
from machines.scan.source import image_layers


@dataclasses.dataclass
class ScanResult:
    image: str
    inventory: Inventory
    findings: list[osv.Finding]
    ignored: list[tuple[osv.Finding, report.Ignore]]
    expired: list[report.Ignore]


def inventory(image: str, machine: object | None = None) -> Inventory:
    with image_layers(image, machine) as layers:
        return scan_layers(layers)


def vulnerabilities(image: str, found: Inventory, db: Path, *, update: bool = False, ignore_unfixed: bool = False,
                    ignore_file: Path | None = None, today: datetime.date | None = None) -> ScanResult:
    ecosystems = osv.ecosystems_in(found)
    if update:
        osvdata.update(db, ecosystems)
    if not db.is_dir() or not any(db.iterdir()):
        raise ScanError(f"no OSV data in {db}: run with --db-update where the internet is reachable, or give "
                        "--db DIR with OSV records (JSON files or osv.dev's all.zip archives)")
    findings = osv.match(found, osv.load_records(db, ecosystems))
    if (unmatched := osv.unmatched_distribution(found)) and unmatched not in found.problems:
        found.problems.append(unmatched)  # reported with the inventory's warnings (stderr, json "warnings")
    if ignore_unfixed:
        findings = [f for f in findings if f.fixed]
    ignores = report.read_ignore_file(ignore_file) if ignore_file else []
    kept, ignored, expired = report.apply_ignores(findings, ignores, today or datetime.date.today())
    return ScanResult(image, found, kept, ignored, expired)
