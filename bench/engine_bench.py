"""Create + start + wait + remove of a ``/bin/true`` container: the engine against crun and runc, same rootfs.

Run as root: ``python3 bench/engine_bench.py [-n 20]``. On a hybrid cgroup host crun refuses to run while
``/sys/fs/cgroup/unified`` is mounted, so the script re-runs itself in a private mount namespace without that mount
(nothing changes for the rest of the machine). Prints the median and 90th percentile of each.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machines.runtime.engine import Engine  # noqa: E402
from tests.support import busybox  # noqa: E402

UNIFIED = "/sys/fs/cgroup/unified"


def busybox_rootfs(path: str) -> None:
    """The tests' busybox image unpacked, plus the mount points runc needs."""
    with tarfile.open(fileobj=io.BytesIO(busybox.rootfs())) as tar:
        tar.extractall(path)
    for sub in ("proc", "sys", "dev"):
        os.makedirs(os.path.join(path, sub))


def oci_bundle(tool: str, rootfs: str, bundle: str) -> None:
    os.makedirs(bundle)
    subprocess.run([tool, "spec"], cwd=bundle, check=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["root"] = {"path": rootfs, "readonly": True}
    spec["process"]["args"] = ["/bin/true"]
    spec["process"]["terminal"] = False
    with open(path, "w") as f:
        json.dump(spec, f)


def measure(label: str, runs: int, once: Callable[[int], None]) -> dict[str, float]:
    once(-1)  # warm caches
    times: list[float] = []
    for i in range(runs):
        started = time.perf_counter()
        once(i)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    result = {"median_ms": statistics.median(times), "p90_ms": times[int(len(times) * 0.9) - 1],
              "min_ms": times[0]}
    print(f'{label:<44} median {result["median_ms"]:7.1f} ms   p90 {result["p90_ms"]:7.1f} ms   min {result["min_ms"]:7.1f} ms', flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("engine_bench: run as root", file=sys.stderr)
        return 1
    if not args.in_namespace and os.path.ismount(UNIFIED) and os.path.isdir("/sys/fs/cgroup/memory"):
        return subprocess.call(["unshare", "--mount", "--propagation", "private", sys.executable,
                                os.path.abspath(__file__), "-n", str(args.runs), "--in-namespace"])
    if args.in_namespace:
        subprocess.run(["umount", UNIFIED], check=False)

    base = tempfile.mkdtemp(prefix="engine-bench-")
    try:
        rootfs = os.path.join(base, "rootfs")
        busybox_rootfs(rootfs)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(rootfs, arcname=".")
        buf.seek(0)
        engine = Engine(os.path.join(base, "data"), os.path.join(base, "run"))
        engine.images.import_tar(buf, repo_tag="busybox:latest")
        results: dict[str, dict[str, float]] = {}

        def engine_once(_: int) -> None:
            cid = engine.create_container({"Image": "busybox", "Cmd": ["/bin/true"],
                                           "HostConfig": {"NetworkMode": "none"}})["Id"]
            engine.start(cid)
            engine.wait(cid)
            engine.remove(cid)

        results["engine"] = measure("machines engine (create+start+wait+rm)", args.runs, engine_once)
        engine.close()
        for tool in ("crun", "runc"):
            if not shutil.which(tool):
                print(f"{tool}: not installed, skipped")
                continue
            bundle = os.path.join(base, tool)
            oci_bundle(tool, rootfs, bundle)

            def tool_once(i: int, tool: str = tool, bundle: str = bundle) -> None:
                subprocess.run([tool, "run", "--bundle", bundle, f"bench-{os.getpid()}-{i}"], check=True,
                               stdin=subprocess.DEVNULL)

            results[tool] = measure(f"{tool} run", args.runs, tool_once)
        results["unshare+chroot"] = measure(
            "unshare -pmuin --fork chroot (floor)", args.runs,
            lambda _: subprocess.run(["unshare", "-pmuin", "--fork", "chroot", rootfs, "/bin/true"], check=True))
        if "crun" in results:
            print("engine / crun median: %.1fx" % (results["engine"]["median_ms"] / results["crun"]["median_ms"]))
        print(json.dumps(results))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
