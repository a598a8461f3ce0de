"""The runtime daemon's start, from exec to ``READY=1``, as a host runs it (issue 18 items 3, 4).

Usage (root): ``.venv/bin/python bench/daemon_start.py [--base DIR] [--runs 8] [--importtime] [--profile N]``.
Builds the zipapp of this checkout (and of ``--base``, another checkout, interleaved run by run so both see the same
load) and starts it as that checkout's provisioning does (Debian's ``/usr/bin/python3``, its interpreter flags) in a
scratch data root, in its own network and mount namespaces and its own ``cpuacct`` cgroup. Per run: wall seconds
from exec to ``READY=1`` on ``MACHINES_READY_FD``; CPU seconds of the daemon process (all threads) at ``READY=1``;
CPU of everything it started (the launcher, ``iptables-save``...) at ``READY=1`` and one second later. Prints
medians per checkout as JSON.
``--importtime`` prints the slowest imports (cumulative microseconds, the minimum over the runs) and ``--profile N``
the N costliest functions of one start to ``READY=1`` (cProfile, cumulative).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
CGROUP = Path("/sys/fs/cgroup/cpuacct")
PROFILE = r'''
import cProfile, sys
bundle, out, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, bundle)
profile = cProfile.Profile()
profile.enable()
import machines.runtime.__main__ as main
report = main._report_ready
def ready(fd):
    profile.disable()
    profile.dump_stats(out)
    report(fd)
main._report_ready = ready
sys.exit(main.main(argv))
'''


BUNDLE = r'''
import json, sys
from machines.bootstrap import service
from machines.bootstrap.bundle import build
argv = service.DaemonConfig(python="PYTHON", data_root="/d", api="ssh").argv()
print(json.dumps([*argv[1:argv.index(service.RUNTIME_PATH)], str(build(sys.argv[1]).path)]))
'''


def bundle_of(checkout: Path, cache: Path) -> list[str]:
    """The interpreter flags and zipapp that checkout's provisioning would start the daemon with."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    return json.loads(subprocess.run([sys.executable, "-c", BUNDLE, str(cache)], env=env, check=True,
                                     capture_output=True, text=True, cwd=checkout).stdout)


def _task_cpu(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` (schedstat: nanoseconds on a CPU)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as handle:
            total += int(handle.read().split()[0])
    return total / 1e9


def start_once(command: list[str], settle: float = 1.0) -> dict:
    """One start of the daemon (``command``: up to its ``daemon`` argument) in a scratch root; stopped afterwards."""
    work = Path(tempfile.mkdtemp(prefix="daemon-start-"))
    group = CGROUP / f"daemon-start-{os.getpid()}-{work.name}"
    group.mkdir()
    read, write = os.pipe()
    argv = ["unshare", "--net", "--mount", "--propagation", "private", *command, "daemon",
            "--data-root", str(work / "data"), "--exec-root", str(work / "exec"), "-H", f"unix://{work}/d.sock"]
    env = dict(os.environ, MACHINES_READY_FD=str(write))

    def join() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))

    started = time.monotonic()
    process = subprocess.Popen(argv, env=env, pass_fds=[write], preexec_fn=join, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=open(work / "log", "wb"))
    os.close(write)
    try:
        with os.fdopen(read, "rb") as ready:
            line = ready.readline()
            wall = time.monotonic() - started
            own = _task_cpu(process.pid)
            group_cpu = int((group / "cpuacct.usage").read_text()) / 1e9
        if line != b"READY=1\n":
            raise RuntimeError(f"the daemon did not start: {(work / 'log').read_text()[-2000:]}")
        time.sleep(settle)
        settled = int((group / "cpuacct.usage").read_text()) / 1e9
        return {"wall_s": wall, "daemon_cpu_s": own, "all_cpu_s": group_cpu, "all_cpu_1s_later_s": settled,
                "log": (work / "log").read_text()}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        deadline = time.monotonic() + 10
        while (group / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)  # the launcher leaves at end of file on its socket
        group.rmdir()
        shutil.rmtree(work, ignore_errors=True)


def importtimes(bundle: list[str], runs: int, top: int) -> list[tuple[str, int, int]]:
    """(module, self us, cumulative us), the minimum over ``runs`` starts, slowest cumulative first."""
    best: dict[str, tuple[int, int]] = {}
    for _ in range(runs):
        log = start_once([SYSTEM_PYTHON, "-X", "importtime", *bundle], settle=0)["log"]
        for match in re.finditer(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", log):
            name = match.group(3)[2:] + match.group(4)  # indentation shows the nesting
            own, cumulative = int(match.group(1)), int(match.group(2))
            previous = best.get(name)
            best[name] = (min(own, previous[0]), min(cumulative, previous[1])) if previous else (own, cumulative)
    ranked = sorted(best.items(), key=lambda item: -item[1][1])
    return [(name, own, cumulative) for name, (own, cumulative) in ranked[:top]]


def profile(bundle: list[str], top: int) -> str:
    handle, out = tempfile.mkstemp(prefix="daemon-start-", suffix=".prof")
    os.close(handle)
    start_once([SYSTEM_PYTHON, *bundle[:-1], "-c", PROFILE, bundle[-1], out], settle=0)
    text = io.StringIO()
    pstats.Stats(out, stream=text).sort_stats("cumulative").print_stats(top)
    os.unlink(out)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="another checkout, measured interleaved with this one")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="daemon-start-bundles-") as cache:
        checkouts = {"this": HERE} | ({"base": options.base.resolve()} if options.base else {})
        bundles = {name: bundle_of(path, Path(cache) / name) for name, path in checkouts.items()}
        if options.importtime:
            for name, bundle in bundles.items():
                print(f"# {name}: -X importtime, minimum of {options.runs} (self us, cumulative us)")
                for module, own, cumulative in importtimes(bundle, options.runs, 40):
                    print(f"{own:>8} {cumulative:>8}  {module}")
            return
        if options.profile:
            for name, bundle in bundles.items():
                print(f"# {name}: cProfile of one start to READY=1")
                print(profile(bundle, options.profile))
            return
        results: dict[str, list[dict]] = {name: [] for name in bundles}
        print("load", os.getloadavg(), file=sys.stderr)
        for _ in range(options.runs):
            for name, bundle in bundles.items():
                run = start_once([SYSTEM_PYTHON, *bundle])
                run.pop("log")
                results[name].append(run)
                print(name, json.dumps({k: round(v, 4) for k, v in run.items()}), file=sys.stderr)
        print("load", os.getloadavg(), file=sys.stderr)
        print(json.dumps({name: {key: round(statistics.median(r[key] for r in runs), 4) for key in runs[0]}
                          for name, runs in results.items()}, indent=1))


if __name__ == "__main__":
    main()
