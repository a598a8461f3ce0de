"""Scan on arrival: ``<data root>/scan.json`` (``{"fail_on": "high", "ignore_unfixed": false}``, installed by
``machines create --engine-scan LEVEL``) makes the engine scan every image a pull or a build brings, against the OSV
records in ``<data root>/osv``, and refuse (remove) one with a vulnerability at or above the level. Without the file
nothing is scanned, as with Docker. Read afresh for every image, like the trust policy.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from machines.runtime.errors import Forbidden, InvalidParameter
from machines.runtime.images import archive
from machines.runtime.images.scan import osv
from machines.runtime.images.scan.inventory import scan_layers
from machines.runtime.images.store import Image

SCAN_FILE = "scan.json"
OSV_DIR = "osv"


class ScanRefused(Forbidden):
    """The image carries a vulnerability at or above the machine's threshold."""


class ArrivalScanner:
    def __init__(self, data_root: str) -> None:
        self.path = os.path.join(data_root, SCAN_FILE)
        self.db = Path(data_root) / OSV_DIR

    def settings(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            raise InvalidParameter(f"invalid scan settings in {self.path}") from None
        if not isinstance(doc, dict) or doc.get("fail_on") not in osv.LEVELS[1:]:
            raise InvalidParameter(f"invalid scan settings in {self.path}: fail_on must be one of "
                                   + ", ".join(osv.LEVELS[1:]))
        return doc

    def check(self, name: str, image: Image) -> None:
        """Raise ScanRefused naming the worst findings when ``image`` is over the threshold."""
        settings = self.settings()
        if settings is None:
            return
        with contextlib.ExitStack() as stack:
            layers = (stack.enter_context(archive.decompressed(layer.blob_path)) for layer in image.layers())
            found = scan_layers(layers)
        findings = osv.match(found, osv.load_records(self.db, osv.ecosystems_in(found)))
        if settings.get("ignore_unfixed"):
            findings = [f for f in findings if f.fixed]
        level = settings["fail_on"]
        over = [f for f in findings if osv.LEVELS.index(f.severity) >= osv.LEVELS.index(level)]
        if over:
            shown = ", ".join(f"{f.id} ({f.severity}) in {f.package.name} {f.package.version}" for f in over[:3])
            more = f" and {len(over) - 3} more" if len(over) > 3 else ""
            raise ScanRefused(f"{name}: refused by the engine's scan policy: {len(over)} vulnerabilities at or above "
                              f"{level}: {shown}{more}")
