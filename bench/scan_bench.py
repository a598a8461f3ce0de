"""``machines scan`` time on the debootstrap-made Debian 12 image (tests/support/debian_image.py).

Run from the repository root: ``.venv/bin/python bench/scan_bench.py [--runs 5]``. Times the inventory (reading the
710 MB root filesystem tar and its dpkg status), the match against the OSV records in ``tests/scan/osv``, both
SBOMs, and the whole CLI run; prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machines.scan import report  # noqa: E402
from machines.scan.scan import inventory, vulnerabilities  # noqa: E402
from tests.support.debian_image import debian_rootfs_tar  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OSV_DB = REPO / "tests" / "scan" / "osv"


def median_time(runs: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    tar = str(debian_rootfs_tar())
    found = inventory(tar)
    rows = [
        (f"inventory ({len(found.packages)} dpkg packages, {os.path.getsize(tar) >> 20} MiB tar)",
         median_time(runs, lambda: inventory(tar))),
        ("match against tests/scan/osv", median_time(runs, lambda: vulnerabilities(tar, found, OSV_DB))),
        ("CycloneDX 1.5 SBOM (built and validated)", median_time(runs, lambda: report.cyclonedx(tar, found))),
        ("SPDX 2.3 SBOM (built and validated)", median_time(runs, lambda: report.spdx(tar, found))),
        ("`machines scan IMAGE.tar --db tests/scan/osv` (whole CLI run)", median_time(runs, lambda: subprocess.run(
            [sys.executable, "-m", "machines", "scan", tar, "--db", str(OSV_DB)], check=True, capture_output=True,
            env=dict(os.environ, PYTHONPATH=str(REPO))))),
    ]
    print("| what | median |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} s |")


if __name__ == "__main__":
    main()
