"""Times making 1 and 8 local hosts at once, at three levels, and prints a markdown table.

- ``IsolatedHost`` create + start (the namespace host alone, until sshd accepts connections);
- ``Machines.create`` with the local driver and no provisioning (host, SSH key, first SSH login with the pinned key);
- ``Machines.create`` with provisioning (the runtime installed and its API answering), unless ``--no-provision``.

Each cell is the median wall time of ``--runs`` rounds; hosts are removed between rounds (removal is timed too).
Runs on a bridge of its own, as root: ``.venv/bin/python bench/create_hosts.py [--runs 3] [--no-provision]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machines import Machines  # noqa: E402
from machines.drivers.nshost import Bridge, IsolatedHost, generate_host_key, hold_free_bridge  # noqa: E402


def parallel(count: int, make: Callable[[int], object]) -> tuple[float, list[object]]:
    """Run ``make(i)`` for i < count at once; the wall time and the results."""
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(make, range(count)))
    return time.perf_counter() - started, results


def bench_isolated(bridge: Bridge, root: str, count: int) -> tuple[float, float]:
    public = generate_host_key()[1]
    tag = uuid.uuid4().hex[:6]

    def make(index: int) -> IsolatedHost:
        host = IsolatedHost.create(os.path.join(root, f"i{tag}{index}"), f"i{tag}{index}", public,
                                   bridge=bridge.name, subnet=bridge.subnet)
        host.start()
        return host

    made, hosts = parallel(count, make)
    removed, _ = parallel(count, lambda index: hosts[index].remove())
    return made, removed


def bench_machines(bridge: Bridge, root: str, count: int, provision: bool) -> tuple[float, float]:
    machines = Machines(os.path.join(root, f"store-{uuid.uuid4().hex[:6]}"))
    flags = {"bridge": bridge.name, "subnet": bridge.subnet}
    tag = uuid.uuid4().hex[:6]
    made, created = parallel(count, lambda index: machines.create(f"m{tag}{index}", "local", flags,
                                                                  provision=provision))
    removed, _ = parallel(count, lambda index: machines.remove(created[index].name))
    return made, removed


def provisioned(runs: int) -> dict[str, float]:
    """Medians of ``runs`` rounds: one provisioned local machine, and eight at once (seconds)."""
    bridge = hold_free_bridge(f"mb{os.getpid() % 10**8}", "10.213", 16, os.getpid())
    try:
        with tempfile.TemporaryDirectory(prefix="create-hosts-") as root:
            one = [bench_machines(bridge, root, 1, True)[0] for _ in range(runs)]
            eight = [bench_machines(bridge, root, 8, True)[0] for _ in range(runs)]
    finally:
        bridge.unhold()
    return {"one_s": statistics.median(one), "eight_s": statistics.median(eight)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-provision", action="store_true", help="skip the rows with provisioning")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/create_hosts.py needs root (network namespaces)")
    bridge = hold_free_bridge(f"mb{os.getpid() % 10**8}", "10.213", 16, os.getpid())
    rows: list[tuple[str, Callable[[str, int], tuple[float, float]]]] = [
        ("IsolatedHost create + start", lambda root, count: bench_isolated(bridge, root, count)),
        ("machines create --no-provision", lambda root, count: bench_machines(bridge, root, count, False)),
    ]
    if not args.no_provision:
        rows.append(("machines create (provisioned)", lambda root, count: bench_machines(bridge, root, count, True)))
    try:
        with tempfile.TemporaryDirectory(prefix="create-hosts-") as root:
            print(f"| what ({args.runs} runs, median) | 1 host | 8 hosts in parallel | rm of 8 in parallel |")
            print("|---|---|---|---|")
            for label, run in rows:
                one = [run(root, 1)[0] for _ in range(args.runs)]
                eight = [run(root, 8) for _ in range(args.runs)]
                print(f"| {label} | {statistics.median(one):.2f} s | "
                      f"{statistics.median(made for made, _ in eight):.2f} s | "
                      f"{statistics.median(removed for _, removed in eight):.2f} s |", flush=True)
    finally:
        bridge.unhold()


if __name__ == "__main__":
    main()
