"""``docker run --rm IMAGE true`` and ``docker ps -a`` through this checkout's daemon, the daemon of an older
revision and Debian's dockerd, interleaved: on a shared machine whose load moves by the minute, every round asks each
daemon once (in a rotating order), so the three medians saw the same load and their ratios compare a change fairly.

    .venv/bin/python bench/api_interleaved.py --base REV [--rounds 20]

REV is exported with ``git archive`` into a temporary folder and its daemon runs from there. Prints JSON: medians
in ms, each one's ratio to dockerd, and the load average before and after. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.api_bench import IMAGE, REPO, docker, dockerd_running, ours_running  # noqa: E402


def load_average() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def export_revision(base: str, tree: Path) -> None:
    """The checkout of revision ``base`` in the new folder ``tree`` (``git archive``), to run its daemon from."""
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", base], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)


def command_line(doc: str, run: Callable[[Any, int], dict], base: str | None, base_help: str) -> int:
    """``--base REV --rounds N``: print ``run(base, rounds)`` as JSON (this module's and ``stream_latency``'s)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--base", default=base, help=base_help)
    parser.add_argument("--rounds", type=int, default=20, help="rounds; each measures everything once per daemon")
    args = parser.parse_args()
    print(json.dumps(run(args.base, args.rounds), indent=2))
    return 0


def _timed_ms(socket_path: str, *args: str) -> float:
    started = time.perf_counter()
    docker(socket_path, *args)
    return (time.perf_counter() - started) * 1000


def run(base: str, rounds: int) -> dict[str, object]:
    rootfs = subprocess.run(["bash", str(REPO / "scripts" / "busybox-rootfs.sh")], capture_output=True,
                            check=True).stdout
    with tempfile.TemporaryDirectory(prefix="api-interleaved-", dir="/var/tmp") as folder, \
            contextlib.ExitStack() as daemons:
        work = Path(folder)
        tree = work / "base-tree"
        export_revision(base, tree)
        sockets = {"base": daemons.enter_context(ours_running(work, "base", tree, octet=193))[0],
                   "this": daemons.enter_context(ours_running(work, "this", REPO, octet=194))[0],
                   "dockerd": daemons.enter_context(dockerd_running(work))[0]}
        for sock in sockets.values():
            docker(sock, "import", "-", IMAGE, input=rootfs)
            for _ in range(2):  # warm caches (page cache, first bridge)
                docker(sock, "run", "--rm", IMAGE, "true")
            for _ in range(10):  # something for ps to list
                docker(sock, "create", IMAGE, "true")
        before = load_average()
        samples: dict[str, dict[str, list[float]]] = {"run_rm_ms": {}, "ps_ms": {}}
        names = list(sockets)
        for index in range(rounds):
            order = names[index % len(names):] + names[:index % len(names)]
            for key, args in (("run_rm_ms", ("run", "--rm", IMAGE, "true")), ("ps_ms", ("ps", "-a"))):
                for name in order:
                    samples[key].setdefault(name, []).append(_timed_ms(sockets[name], *args))
        result: dict[str, object] = {"base": base, "rounds": rounds, "load_before": before, "load_after": load_average()}
        for key, by_daemon in samples.items():
            medians = {name: statistics.median(values) for name, values in by_daemon.items()}
            result[key] = {name: round(value, 1) for name, value in medians.items()}
            result[key.replace("_ms", "_ratio_to_dockerd")] = {
                name: round(medians[name] / medians["dockerd"], 3) for name in ("base", "this")}
        for sock in sockets.values():
            ids = docker(sock, "ps", "-aq").stdout.decode().split()
            if ids:
                docker(sock, "rm", "-f", *ids, timeout=900)
        return result


if __name__ == "__main__":
    sys.exit(command_line(__doc__, run, "main", "the revision to compare with (default: main)"))
