"""Times forming a 3-node Swarm mode cluster from nothing with the real ``machines`` command, and prints a table.

One round: ``machines create --engine docker`` of three local hosts in parallel (Docker Engine adopted from the
machine's Debian ``docker.io``, configured with our TLS, data root on /data), ``machines swarm init`` on the first,
``machines swarm join`` of the two others as managers; then ``machines rm -f`` of all three (timed apart). Each
cell is the median of ``--runs`` rounds. Inside local hosts dockerd runs with ``iptables=false ip-masq=false
bridge=none`` (as the tests do), so this machine's tables are left alone.

Runs as root on a bridge of its own: ``.venv/bin/python bench/swarm_bench.py [--runs 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machines.drivers.nshost import hold_free_bridge  # noqa: E402

MACHINES = os.path.join(os.path.dirname(sys.executable), "machines")
ENGINE_FLAGS = ["--engine", "docker", "--runtime-data-root", "/data/docker", "--engine-opt", "iptables=false",
                "--engine-opt", "ip-masq=false", "--engine-opt", "bridge=none"]


def timed(store: str, env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([MACHINES, "--storage-path", store, *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"machines {' '.join(args)} failed: {result.stderr}")
    return time.perf_counter() - started


def one_round(root: str, env: dict[str, str]) -> dict[str, float]:
    store = os.path.join(root, f"store-{uuid.uuid4().hex[:6]}")
    names = [f"s{uuid.uuid4().hex[:6]}{index}" for index in range(3)]
    try:
        times = {"create 3 (parallel)": timed(store, env, "create", *ENGINE_FLAGS, *names)}
        times["swarm init"] = timed(store, env, "swarm", "init", names[0])
        times["swarm join 2 managers"] = timed(store, env, "swarm", "join", *names[1:], "--manager", names[0],
                                               "--role", "manager")
        times["total"] = sum(times.values())
        times["rm -f 3"] = timed(store, env, "rm", "-f", "-y", *names)
    finally:  # a failed round must not leave its hosts behind when the temporary store goes
        subprocess.run([MACHINES, "--storage-path", store, "rm", "-f", "-y", "--filter", "name=."], env=env,
                       capture_output=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    bridge = hold_free_bridge(f"mbs{os.getpid() % 10**7}", "10.213", 16, os.getpid())
    env = {**os.environ, "MACHINES_LOCAL_BRIDGE": bridge.name, "MACHINES_LOCAL_SUBNET": bridge.subnet}
    try:
        with tempfile.TemporaryDirectory(prefix="swarm-bench-") as root:
            rounds = [one_round(root, env) for _ in range(arguments.runs)]
    finally:
        bridge.unhold()
    print(f"| step | median of {arguments.runs} (s) | max (s) |\n|---|---|---|")
    for step in rounds[0]:
        values = [times[step] for times in rounds]
        print(f"| {step} | {statistics.median(values):.2f} | {max(values):.2f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
