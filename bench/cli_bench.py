"""CLI start-up (``machines version``) and ``machines ls`` of 100 machines, as a user runs them (one process each).

Run as root: ``.venv/bin/python bench/cli_bench.py [--runs 10] [--machines 100]``. The store holds one real local
machine (host up, not provisioned) and copies of its entry under other names, so every row of ``ls`` asks a driver
for a live state; the copies and the machine are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machines import Machines  # noqa: E402


def _machines_cli(store: Path, *args: str) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one ``machines`` process, from exec to exit.

    On a loaded machine the wall time is mostly waiting for a core; the CPU time is what the process itself costs.
    """
    env = dict(os.environ, PYTHONPATH=str(REPO), MACHINES_STORAGE_PATH=str(store))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "machines", *args], env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def _medians(samples: list[tuple[float, float]], name: str) -> dict[str, float]:
    return {f"{name}_s": statistics.median(wall for wall, _ in samples),
            f"{name}_cpu_s": statistics.median(cpu for _, cpu in samples)}


def _special_files(folder: str, names: list[str]) -> list[str]:
    """Overlay whiteouts (character devices) in the host's upper layer: not copyable, not needed by ``ls``."""
    return [name for name in names if not os.path.islink(os.path.join(folder, name))
            and not os.path.isfile(os.path.join(folder, name)) and not os.path.isdir(os.path.join(folder, name))]


def run(runs: int, count: int) -> dict[str, float]:
    """Medians in seconds (wall and CPU): ``machines version`` and ``machines ls`` over ``count`` machines."""
    with tempfile.TemporaryDirectory(prefix="cli-bench-") as folder:
        store = Path(folder) / "store"
        version = [_machines_cli(store, "version") for _ in range(runs)]
        machines = Machines(store)
        original = machines.create(f"ls{os.getpid()}", "local", provision=False).name
        try:
            source = machines.store.machine_dir(original)
            for index in range(count - 1):
                name = f"{original}c{index}"
                shutil.copytree(source, machines.store.machine_dir(name), symlinks=True, ignore=_special_files)
                record = json.loads((machines.store.machine_dir(name) / "config.json").read_text())
                record["name"] = name
                machines.store.save(name, record)
            listing = [_machines_cli(store, "ls") for _ in range(runs)]
        finally:
            for name in machines.store.names():
                if name != original:
                    shutil.rmtree(machines.store.machine_dir(name))
            machines.remove(original, force=True)
    return _medians(version, "version") | _medians(listing, "ls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--machines", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(run(args.runs, args.machines), indent=2))


if __name__ == "__main__":
    main()
