"""Time each provisioning phase on fresh test hosts (real sshd in network namespaces), first run and re-run.

Usage: ``.venv/bin/python bench/provision_bench.py [--runs N] [--driver generic|local]``. Prints a markdown table of
median and max seconds per phase for a first provisioning (nothing on the host) and for a second one (everything
already there: the idempotent path ``start`` takes after a host restart). Every host is removed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from machines import Machines
from machines.bootstrap import provision
from machines.drivers.nshost import IsolatedHost
from machines.hostoptions import HostOptions
from machines.machine import Machine
from machines.progress import Progress
from machines.store import generate_ssh_key


def _machine(machines: Machines, driver: str, work: Path, hosts: list[IsolatedHost]) -> Machine:
    """A machine whose host is up and whose SSH key is pinned, not yet provisioned."""
    name = f"pb{uuid.uuid4().hex[:8]}"
    if driver == "local":
        return machines.create(name, "local", provision=False)
    folder = work / name
    folder.mkdir()
    host = IsolatedHost.create(str(folder / "host"), name, generate_ssh_key(folder, "bench"))
    hosts.append(host)
    # A reused address keeps the removed host's MAC in the bridge's ARP cache for seconds: forget it.
    subprocess.run(["ip", "neigh", "flush", "to", host.address, "dev", host.record.bridge], capture_output=True)
    host.start()
    return machines.create(
        name,
        "generic",
        {"ip_address": host.address, "ssh_key": str(folder / "id_ed25519")},
        host_options=HostOptions(api="tls", data_root="/data/runtime"),
        provision=False,
    )


def _timed(machine: Machine) -> dict[str, float]:
    progress = Progress(machine.name)
    started = time.monotonic()
    provision.provision(machine, progress)
    timings = dict(progress.timings)
    timings["total"] = time.monotonic() - started
    machine.close()
    return timings


def _table(title: str, runs: list[dict[str, float]]) -> str:
    lines = [f"**{title}** ({len(runs)} runs)", "", "| phase | median s | max s |", "|---|---|---|"]
    for phase in runs[0]:
        values = [run[phase] for run in runs]
        lines.append(f"| {phase} | {statistics.median(values):.3f} | {max(values):.3f} |")
    return "\n".join(lines)


def phases(runs: int, driver: str) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Seconds per phase of ``runs`` first provisionings and of the second provisioning of the same machines."""
    hosts: list[IsolatedHost] = []
    first, second = [], []
    with tempfile.TemporaryDirectory(prefix="provision-bench-") as work:
        machines = Machines(Path(work) / "store")
        try:
            for _ in range(runs):
                machine = _machine(machines, driver, Path(work), hosts)
                first.append(_timed(machine))
                second.append(_timed(machines.get(machine.name)))
        finally:
            for machine in machines.list():
                if driver == "local":
                    machines.remove(machine.name, force=True)
            for host in hosts:
                host.remove()
    return first, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--driver", choices=("generic", "local"), default="generic")
    arguments = parser.parse_args()
    first, second = phases(arguments.runs, arguments.driver)
    print(_table(f"First provisioning ({arguments.driver} host)", first))
    print()
    print(_table("Second provisioning (nothing to change)", second))


if __name__ == "__main__":
    main()
