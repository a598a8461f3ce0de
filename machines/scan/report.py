"""What ``machines scan`` writes: a table, JSON, SARIF 2.1.0, and SBOMs through the formats' own libraries
(cyclonedx-python-lib for CycloneDX 1.5 JSON, spdx-tools for SPDX 2.3 JSON, each validated as it is written);
plus the ignore file (``.trivyignore`` style: ``ID [exp:YYYY-MM-DD] [# reason]``)."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import re
import uuid
from pathlib import Path
from typing import Any

from machines import __version__
from machines.errors import ScanError
from machines.runtime.images.scan.inventory import Inventory, Package
from machines.runtime.images.scan.osv import LEVELS, Finding

SARIF_LEVELS = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "unknown": "note"}
PURL_TYPES = {"dpkg": "deb", "apk": "apk", "rpm": "rpm", "python": "pypi", "npm": "npm", "go": "golang"}


@dataclasses.dataclass(frozen=True)
class Ignore:
    id: str
    expires: datetime.date | None
    reason: str


def read_ignore_file(path: Path) -> list[Ignore]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ScanError(f"cannot read ignore file {path}: {exc.strerror}") from None
    out = []
    for number, line in enumerate(lines, 1):
        text, _, reason = line.partition("#")
        words = text.split()
        if not words:
            continue
        expires = None
        for word in words[1:]:
            if not word.startswith("exp:"):
                raise ScanError(f"{path}:{number}: expected 'ID [exp:YYYY-MM-DD] [# reason]', got {line.strip()!r}")
            try:
                expires = datetime.date.fromisoformat(word[4:])
            except ValueError:
                raise ScanError(f"{path}:{number}: bad expiry date {word[4:]!r} (use YYYY-MM-DD)") from None
        out.append(Ignore(words[0], expires, reason.strip()))
    return out


def apply_ignores(findings: list[Finding], ignores: list[Ignore], today: datetime.date,
                  ) -> tuple[list[Finding], list[tuple[Finding, Ignore]], list[Ignore]]:
    """(kept findings, ignored ones with their entry, expired entries): an entry past its date ignores nothing."""
    expired = [entry for entry in ignores if entry.expires is not None and entry.expires < today]
    active = {entry.id: entry for entry in ignores if entry not in expired}
    kept, ignored = [], []
    for finding in findings:
        entry = next((active[i] for i in (finding.id, *finding.aliases) if i in active), None)
        if entry is None:
            kept.append(finding)
        else:
            ignored.append((finding, entry))
    return kept, ignored, expired


def at_or_above(findings: list[Finding], level: str) -> list[Finding]:
    return [f for f in findings if LEVELS.index(f.severity) >= LEVELS.index(level)]


def table(findings: list[Finding], inventory: Inventory) -> str:
    rows = [("ID", "PACKAGE", "INSTALLED", "FIXED", "SEVERITY", "CVSS")]
    rows += [(f.id, f.package.name, f.package.version, f.fixed or "(not fixed)", f.severity,
              f"{f.score:.1f}" if f.score is not None else "") for f in findings]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    counts = {level: sum(f.severity == level for f in findings) for level in reversed(LEVELS)}
    summary = ", ".join(f"{n} {level}" for level, n in counts.items() if n) or "none"
    lines.append(f"{len(inventory.packages)} packages ({inventory.distro or 'unknown OS'}); "
                 f"{len(findings)} vulnerabilities: {summary}")
    return "\n".join(lines if findings else lines[-1:])


def _finding_json(f: Finding) -> dict[str, Any]:
    return {"id": f.id, "aliases": list(f.aliases), "package": f.package.name, "kind": f.package.kind,
            "installed": f.package.version, "fixed": f.fixed, "severity": f.severity, "cvss": f.score,
            "path": f.package.path, "summary": f.summary}


def to_json(image: str, inventory: Inventory, findings: list[Finding],
            ignored: list[tuple[Finding, Ignore]]) -> str:
    doc = {"image": image, "os": inventory.os_release.get("PRETTY_NAME") or inventory.distro,
           "packages": len(inventory.packages), "warnings": inventory.problems,
           "vulnerabilities": [_finding_json(f) for f in findings],
           "ignored": [dict(_finding_json(f), reason=entry.reason,
                            expires=entry.expires.isoformat() if entry.expires else None) for f, entry in ignored]}
    return json.dumps(doc, indent=2)


def to_sarif(image: str, findings: list[Finding]) -> str:
    rules: dict[str, dict[str, Any]] = {}
    results = []
    for f in findings:
        rules.setdefault(f.id, {
            "id": f.id, "shortDescription": {"text": f.summary or f.id},
            "helpUri": f"https://osv.dev/vulnerability/{f.id}",
            "properties": {"security-severity": f"{f.score:.1f}" if f.score is not None else "0.0",
                           "tags": ["security", "vulnerability", f.severity]}})
        results.append({
            "ruleId": f.id, "level": SARIF_LEVELS[f.severity],
            "message": {"text": f"{f.package.name} {f.package.version} in {image} is affected by {f.id}"
                                + (f"; fixed in {f.fixed}" if f.fixed else "; no fix yet")},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": f.package.path.lstrip("/")}}}]})
    return json.dumps({"version": "2.1.0", "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
                       "runs": [{"tool": {"driver": {"name": "machines scan", "version": __version__,
                                                     "informationUri": "https://osv.dev",
                                                     "rules": list(rules.values())}},
                                 "results": results}]}, indent=2)


def purl(package: Package, inventory: Inventory) -> str:
    from packageurl import PackageURL

    kind = PURL_TYPES[package.kind]
    namespace, name, version = None, package.name, package.version
    qualifiers: dict[str, str] = {}
    if package.kind == "rpm" and re.match(r"\d+:", version):
        qualifiers["epoch"], version = version.split(":", 1)  # purl's rpm type keeps the epoch apart
    if package.kind in ("dpkg", "apk", "rpm"):
        namespace = inventory.os_release.get("ID") or None
        if package.arch:
            qualifiers["arch"] = package.arch
        if inventory.distro:
            qualifiers["distro"] = inventory.distro.replace(" ", "-")
    elif "/" in name:
        namespace, name = name.rsplit("/", 1)
    return PackageURL(type=kind, namespace=namespace, name=name, version=version,
                      qualifiers=qualifiers or None).to_string()


def cyclonedx(image: str, inventory: Inventory) -> str:
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot5
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL

    bom = Bom()
    root = Component(name=image, type=ComponentType.CONTAINER, bom_ref="image")
    bom.metadata.component = root
    components = [Component(name=package.name, version=package.version, type=ComponentType.LIBRARY,
                            bom_ref=f"pkg-{index}", purl=PackageURL.from_string(purl(package, inventory)))
                  for index, package in enumerate(inventory.packages)]
    bom.components.update(components)
    bom.register_dependency(root, components)  # the image contains them all
    text = JsonV1Dot5(bom).output_as_string(indent=2)
    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    if error is not None:
        raise ScanError(f"the CycloneDX document does not validate: {error}")
    return text


def spdx(image: str, inventory: Inventory) -> str:
    from spdx_tools.spdx.model.actor import Actor, ActorType
    from spdx_tools.spdx.model.document import CreationInfo, Document
    from spdx_tools.spdx.model.package import ExternalPackageRef, ExternalPackageRefCategory
    from spdx_tools.spdx.model.package import Package as SpdxPackage
    from spdx_tools.spdx.model.relationship import Relationship, RelationshipType
    from spdx_tools.spdx.model.spdx_no_assertion import SpdxNoAssertion
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

    safe = re.sub(r"[^A-Za-z0-9.-]", "-", image)
    info = CreationInfo("SPDX-2.3", "SPDXRef-DOCUMENT", image, f"https://spdx.org/spdxdocs/machines-scan/{safe}-"
                        f"{uuid.uuid4()}", [Actor(ActorType.TOOL, f"machines-{__version__}")],
                        datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0))
    image_package = SpdxPackage("SPDXRef-image", image, SpdxNoAssertion(), files_analyzed=False)
    packages = [image_package]
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, "SPDXRef-image")]
    for index, package in enumerate(inventory.packages):
        spdx_id = f"SPDXRef-Package-{index}"
        packages.append(SpdxPackage(spdx_id, package.name, SpdxNoAssertion(), version=package.version,
                                    files_analyzed=False, external_references=[ExternalPackageRef(
                                        ExternalPackageRefCategory.PACKAGE_MANAGER, "purl",
                                        purl(package, inventory))]))
        relationships.append(Relationship("SPDXRef-image", RelationshipType.CONTAINS, spdx_id))
    stream = io.StringIO()
    try:
        write_document_to_stream(Document(info, packages=packages, relationships=relationships), stream, validate=True)
    except ValueError as exc:
        raise ScanError(f"the SPDX document does not validate: {exc}") from None
    return stream.getvalue()
