"""Provisioning and parallel creates of two checkouts, interleaved so that both see the same load (issue 18 items 3, 4).

Usage (root): ``.venv/bin/python bench/provision_interleaved.py --base DIR [--rounds 3]``, where DIR is another
checkout with its own ``.venv`` link, e.g. ``mkdir DIR && git archive main | tar -x -C DIR && ln -s $PWD/.venv DIR``.
Each round runs, in a fresh process of each checkout one after the other:

- two provisionings of a new local machine: seconds after SSH is up, and CPU seconds of the workstation process and
  of the host (its cpuacct cgroup: sshd, the scripts, the daemon's start), the load-independent figures;
- ``create_hosts.provisioned(1)``: one provisioned local machine, then eight at once;
- ``machines version`` three times (wall and CPU).

Prints each round and then the medians per checkout as JSON. On a shared machine compare the two columns, not the
absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
PROVISION = r'''
import contextlib, json, os, tempfile, time
from pathlib import Path
from machines import Machines
from machines.bootstrap import provision
from machines.drivers.nshost import IsolatedHost
from machines.progress import Progress

def host_cpu(machine):
    cgroups = IsolatedHost(os.path.join(machine.dir, "host")).record.cgroups
    usage = next(os.path.join(f, "cpuacct.usage") for f in cgroups if os.path.exists(os.path.join(f, "cpuacct.usage")))
    return int(Path(usage).read_text()) / 1e9

runs = []
with tempfile.TemporaryDirectory(prefix="provision-interleaved-") as work, contextlib.ExitStack() as stack:
    machines = Machines(Path(work) / "store")
    stack.callback(lambda: [machines.remove(m.name, force=True) for m in machines.list()])
    for index in range(2):
        machine = machines.create(f"pi{os.getpid()}x{index}", "local", provision=False)
        progress = Progress(machine.name)
        host, own, started = host_cpu(machine), time.process_time(), time.monotonic()
        provision.provision(machine, progress)
        detect = dict(progress.timings)["detect"]
        runs.append({"after_ssh_s": time.monotonic() - started - detect, "detect_s": detect,
                     "host_cpu_s": host_cpu(machine) - host, "workstation_cpu_s": time.process_time() - own})
        machine.close()
print(json.dumps(runs))
'''
PARALLEL = "import json\nfrom bench import create_hosts\nprint(json.dumps(create_hosts.provisioned(1)))\n"


def _python(checkout: Path, code: str) -> object:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": str(checkout)}
    done = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-c", code], cwd=checkout, env=env,
                          capture_output=True, text=True, check=True, timeout=900)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _version(checkout: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-m", "machines", "version"], cwd=checkout, env=env,
                   check=True, capture_output=True)
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"version_s": wall, "version_cpu_s": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (before)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    checkouts = {"base": args.base.resolve(), "this": HERE}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    for round_number in range(args.rounds):
        for name, checkout in checkouts.items():
            provisioned = _python(checkout, PROVISION)
            parallel = _python(checkout, PARALLEL)
            row = {"eight_over_one": parallel["eight_s"] / parallel["one_s"], **parallel}
            samples[name] += [{**run, **row, **_version(checkout)} for run in provisioned]
            load = Path("/proc/loadavg").read_text().split()[0]
            print(f"round {round_number + 1} {name} (load {load}):", json.dumps(samples[name][-1]), flush=True)
    print(json.dumps({name: {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}
                      for name, runs in samples.items()}, indent=2))


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench/provision_interleaved.py needs root (network namespaces)")
    main()
