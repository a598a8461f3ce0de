"""OSV records: load them from a folder (JSON files, or the ``all.zip`` archives osv.dev publishes per ecosystem),
match an inventory against them with each ecosystem's version order, and grade severities (CVSS v4 or v3 score).
Standard library only: the runtime matches images on arrival with it, ``machines scan`` on the workstation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from machines.runtime.images.scan.cvss4 import cvss4_score
from machines.runtime.images.scan.inventory import Inventory, Package, canonicalize_name
from machines.runtime.images.scan.versions import COMPARATORS, BadVersion

LEVELS = ("unknown", "low", "medium", "high", "critical")
OS_ECOSYSTEMS = {"debian": "Debian", "ubuntu": "Ubuntu", "alpine": "Alpine", "almalinux": "AlmaLinux",
                 "rocky": "Rocky Linux", "rhel": "Red Hat", "opensuse-leap": "openSUSE", "sles": "SUSE"}
VERSION_KINDS = {"Debian": "dpkg", "Ubuntu": "dpkg", "Alpine": "apk", "AlmaLinux": "rpm", "Rocky Linux": "rpm",
                 "Red Hat": "rpm", "openSUSE": "rpm", "SUSE": "rpm", "PyPI": "pep440", "npm": "semver",
                 "Go": "semver"}
Compare = Callable[[str, str], int]
LANGUAGE_ECOSYSTEMS = {"python": "PyPI", "npm": "npm", "go": "Go"}


@dataclasses.dataclass(frozen=True)
class Finding:
    id: str
    aliases: tuple[str, ...]
    package: Package
    fixed: str | None
    severity: str
    score: float | None
    summary: str


def ecosystem_of(package: Package, inventory: Inventory) -> str | None:
    """The OSV ecosystem of a package, with the release for OS packages as the OSV schema and osv-scalibr's
    os-release mapping spell it: ``Debian:12``, ``Alpine:v3.18``, ``AlmaLinux:8`` (major only), ``openSUSE:Leap
    15.5``, ``Red Hat:enterprise_linux:9::baseos`` (the image's CPE_NAME after ``redhat:``)."""
    if package.kind in LANGUAGE_ECOSYSTEMS:
        return LANGUAGE_ECOSYSTEMS[package.kind]
    base = OS_ECOSYSTEMS.get(inventory.os_release.get("ID", ""))
    version = inventory.os_release.get("VERSION_ID", "")
    if base is None:
        return None
    if base == "Red Hat":
        _, found, stream = inventory.os_release.get("CPE_NAME", "").partition(":redhat:")
        return f"{base}:{stream}" if found and stream else base
    if not version:
        return base
    if base == "Alpine":
        return f"Alpine:v{'.'.join(version.split('.')[:2])}"
    if base in ("Debian", "AlmaLinux", "Rocky Linux"):
        return f"{base}:{version.split('.')[0]}"
    if base == "openSUSE":
        return f"openSUSE:Leap {version}"
    return f"{base}:{version}"


def _ecosystem_matches(record: str, ours: str) -> bool:
    base = ours.split(":")[0]
    return record == ours or record.startswith(ours + ":") or record == base


# --- CVSS v3 ---------------------------------------------------------------------------------------------------

CVSS3 = {"AV": {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2}, "AC": {"L": 0.77, "H": 0.44},
         "UI": {"N": 0.85, "R": 0.62}, "C": {"H": 0.56, "L": 0.22, "N": 0.0}}


def _roundup(value: float) -> float:
    scaled = round(value * 100000)
    return scaled / 100000.0 if scaled % 10000 == 0 else (math.floor(scaled / 10000) + 1) / 10.0


def cvss3_score(vector: str) -> float | None:
    """The CVSS v3.x base score of a vector string (FIRST's formulas); None when it is not a v3 vector."""
    parts = dict(item.split(":", 1) for item in vector.split("/")[1:] if ":" in item)
    if not vector.startswith("CVSS:3") or not {"AV", "AC", "PR", "UI", "S", "C", "I", "A"} <= parts.keys():
        return None
    try:
        changed = parts["S"] == "C"
        pr = {"N": 0.85, "L": 0.68 if changed else 0.62, "H": 0.5 if changed else 0.27}[parts["PR"]]
        iss = 1 - math.prod(1 - CVSS3["C"][parts[k]] for k in ("C", "I", "A"))
        exploitability = 8.22 * CVSS3["AV"][parts["AV"]] * CVSS3["AC"][parts["AC"]] * pr * CVSS3["UI"][parts["UI"]]
    except KeyError:
        return None
    impact = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15 if changed else 6.42 * iss
    if impact <= 0:
        return 0.0
    return _roundup(min((1.08 if changed else 1) * (impact + exploitability), 10))


def level_of(score: float) -> str:
    return "critical" if score >= 9 else "high" if score >= 7 else "medium" if score >= 4 else "low" if score > 0 \
        else "unknown"


def severity_of(record: dict[str, Any], affected: dict[str, Any]) -> tuple[str, float | None]:
    """(level, CVSS score): the score of the record's CVSS v4 vector, else of its v3 vector (the package's own
    severity before the record's), else the database's word (GHSA's MODERATE = medium)."""
    entries = [e for e in (affected.get("severity") or []) + (record.get("severity") or []) if isinstance(e, dict)]
    for kind, score_of in (("CVSS_V4", cvss4_score), ("CVSS_V3", cvss3_score)):
        for entry in entries:
            score = score_of(str(entry.get("score", ""))) if entry.get("type") == kind else None
            if score is not None:
                return level_of(score), score
    words = [(record.get("database_specific") or {}).get("severity"),
             (affected.get("ecosystem_specific") or {}).get("severity"),
             (affected.get("database_specific") or {}).get("severity")]
    for word in words:
        if isinstance(word, str):
            word = {"moderate": "medium", "important": "high"}.get(word.lower(), word.lower())
            if word in LEVELS:
                return word, None
    return "unknown", None


# --- matching --------------------------------------------------------------------------------------------------

def _in_range(events: list[dict[str, Any]], version: str, compare: Compare) -> tuple[bool, str | None]:
    """OSV's ``IncludedInRanges`` for one ECOSYSTEM/SEMVER range (events sorted by version, ``limit`` bounds, ``"*"``
    = no limit); with the ``fixed`` that closes the window ``version`` is in, if any."""
    limits = [value for event in events for kind, value in event.items() if kind == "limit"]
    if limits and not any(value == "*" or compare(version, value) < 0 for value in limits):
        return False, None
    ordered = sorted((item for event in events for item in event.items() if item[0] != "limit"),
                     key=lambda item: (0, "") if item[1] == "0" else (1, _Key(item[1], compare)))
    vulnerable, fix = False, None
    for kind, value in ordered:
        if kind == "introduced" and (value == "0" or compare(version, value) >= 0):
            vulnerable, fix = True, None
        elif kind == "fixed" and compare(version, value) >= 0:
            vulnerable = False
        elif kind == "fixed" and vulnerable and fix is None:
            fix = value  # the first fix above the version, while in a window
        elif kind == "last_affected" and compare(version, value) > 0:
            vulnerable = False
    return vulnerable, fix if vulnerable else None


def _affected_by(entry: dict[str, Any], version: str, compare: Compare) -> tuple[bool, str | None]:
    """Whether ``version`` is in the entry's explicit versions or ECOSYSTEM/SEMVER ranges (GIT ranges name commits,
    which an image's packages do not carry); the lowest fix of the windows it is in."""
    hit = version in (entry.get("versions") or [])
    fixes: list[str] = []
    for rng in entry.get("ranges") or []:
        if not isinstance(rng, dict) or rng.get("type") not in ("ECOSYSTEM", "SEMVER"):
            continue
        events = [e for e in rng.get("events") or []
                  if isinstance(e, dict) and len(e) == 1 and isinstance(next(iter(e.values())), str)]
        try:
            inside, fix = _in_range(events, version, compare)
        except BadVersion:
            continue  # a version this ecosystem cannot order: the range cannot be judged
        hit = hit or inside
        fixes += [fix] if fix else []
    if not hit:
        return False, None
    return True, min(fixes, key=lambda v: _Key(v, compare)) if fixes else None


class _Key:
    def __init__(self, value: str, compare: Compare) -> None:
        self.value, self.compare = value, compare

    def __lt__(self, other: _Key) -> bool:
        return self.compare(self.value, other.value) < 0


def load_records(folder: Path, ecosystems: set[str]) -> Iterator[dict[str, Any]]:
    """Records from ``*.json`` files and ``*.zip`` archives under ``folder`` that name one of ``ecosystems``
    (bases such as ``Debian``)."""
    def wanted(record: object) -> bool:
        return isinstance(record, dict) and any(
            str((a.get("package") or {}).get("ecosystem", "")).split(":")[0] in ecosystems
            for a in record.get("affected") or [] if isinstance(a, dict))

    for path in sorted(folder.rglob("*")):
        if path.suffix == ".json":
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError, RecursionError):
                continue
            if wanted(record):
                yield record
        elif path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if name.endswith(".json"):
                        try:
                            record = json.loads(archive.read(name))
                        except (ValueError, RecursionError):
                            continue
                        if wanted(record):
                            yield record


def match(inventory: Inventory, records: Iterator[dict[str, Any]]) -> list[Finding]:
    by_name: dict[tuple[str, str], list[tuple[Package, str]]] = {}
    for package in inventory.packages:
        ecosystem = ecosystem_of(package, inventory)
        if ecosystem is None:
            continue
        # Debian's and Alpine's records name source packages; AlmaLinux's and Red Hat's name the binary RPMs
        for name in {package.match_name, package.name} if package.kind == "rpm" else {package.match_name}:
            by_name.setdefault((ecosystem.split(":")[0], name), []).append((package, ecosystem))
    findings: dict[tuple[str, Package], Finding] = {}
    for record in records:
        if record.get("withdrawn"):
            continue
        for entry in record.get("affected") or []:
            pkg = entry.get("package") or {}
            ecosystem = str(pkg.get("ecosystem", ""))
            name = str(pkg.get("name", ""))
            if ecosystem.split(":")[0] == "PyPI":
                name = canonicalize_name(name)
            for package, ours in by_name.get((ecosystem.split(":")[0], name), []):
                if not _ecosystem_matches(ecosystem, ours):
                    continue
                compare = COMPARATORS[VERSION_KINDS[ours.split(":")[0]]]
                hit, fixed = _affected_by(entry, package.match_version, compare)
                if hit:
                    level, score = severity_of(record, entry)
                    text = str(record.get("summary") or record.get("details") or "")
                    findings[(record["id"], package)] = Finding(
                        record["id"], _aliases(record), package, fixed, level, score,
                        next((line.strip() for line in text.splitlines() if line.strip()), "")[:200])
    order = {level: index for index, level in enumerate(LEVELS)}
    return sorted(findings.values(), key=lambda f: (-order[f.severity], f.package.name, f.id))


def _aliases(record: dict[str, Any]) -> tuple[str, ...]:
    """The record's other names: ``aliases`` and ``upstream`` (OSV 1.7: Alpine's and Debian's records name the CVE
    they track there). ``related`` ids are other vulnerabilities and are not included."""
    names = [str(name) for name in (record.get("aliases") or []) + (record.get("upstream") or [])]
    return tuple(dict.fromkeys(name for name in names if name != record["id"]))


def unmatched_distribution(inventory: Inventory) -> str | None:
    """Why the image's OS packages cannot be matched, when OSV publishes no ecosystem for its distribution (Amazon
    Linux, CentOS, Fedora, ...): a scan must not pass such an image off as clean."""
    orphans = [p for p in inventory.packages if p.kind not in LANGUAGE_ECOSYSTEMS and ecosystem_of(p, inventory) is None]
    if not orphans:
        return None
    release = " ".join(filter(None, (inventory.os_release.get("ID") or "an unknown distribution",
                                     inventory.os_release.get("VERSION_ID"))))
    return (f"{release}: OSV publishes no data for this distribution: its {len(orphans)} packages are listed, "
            "not matched")


def ecosystems_in(inventory: Inventory) -> set[str]:
    return {e.split(":")[0] for p in inventory.packages if (e := ecosystem_of(p, inventory))}
