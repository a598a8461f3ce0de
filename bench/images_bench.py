"""Pull and build times: the machines runtime against Debian's dockerd, same registry, same image, same context.

Run as root from the repository root: ``.venv/bin/python bench/images_bench.py [--runs 5] [--size-mb 32]``.
Starts a loopback docker-registry (its own config), the runtime daemon and dockerd (``--bridge=none
--iptables=false``, so the host's network is left alone) on private sockets, and stops all three by PID. Needs the
``docker.io`` and ``docker-registry`` packages and the docker CLI. Prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.procs import big_file, copy_floor  # noqa: E402
from machines.runtime.images.service import ImageService  # noqa: E402
from machines.runtime.images.store import ImageStore  # noqa: E402
from tests.support import busybox  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

CGROUP_PARENT = f"/images-bench-{os.getpid()}"  # dockerd's cgroups, removed afterwards
DOCKERFILE = """FROM {image}
COPY files/ /srv/files/
RUN cat /srv/files/* | wc -c > /srv/total
WORKDIR /srv
CMD ["cat", "/srv/total"]
"""


def make_image(store: ImageStore, tag: str, size_mb: int, work: str) -> None:
    """busybox plus one layer of ``size_mb`` MiB in 64 files (half random, half compressible)."""
    base = store.resolve(store.import_tar(io.BytesIO(busybox.rootfs())))
    upper = os.path.join(work, "upper", "data")
    os.makedirs(upper)
    chunk = size_mb * (1 << 20) // 64
    for n in range(64):
        with open(os.path.join(upper, f"f{n:02d}"), "wb") as f:
            f.write(os.urandom(chunk) if n % 2 else bytes(chunk))
    store.commit(os.path.dirname(upper), base, {"Cmd": ["sh"]}, tag)


def start(cmd: list[str], sock: str, log: str) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if os.path.exists(sock) and docker(sock, "version", check=False).returncode == 0:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{cmd[0]} did not start; see {log}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def docker(sock: str, *args: str, check: bool = True, env: dict[str, str] = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, DOCKER_HOST="unix://" + sock, DOCKER_BUILDKIT="0")
    full_env.update(env or {})
    return subprocess.run(["docker"] + list(args), env=full_env, capture_output=True,
                          check=check)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def wipe(sock: str) -> None:
    ids = docker(sock, "images", "-aq").stdout.decode().split()
    if ids:
        docker(sock, "rmi", "-f", *sorted(set(ids)), check=False)
    docker(sock, "image", "prune", "-af", check=False)


def measure(sock: str, image: str, context: str, runs: int) -> dict[str, float]:
    pulls, builds, cached = [], [], []
    for _ in range(runs):
        wipe(sock)
        pulls.append(timed(lambda: docker(sock, "pull", "-q", image)))
        builds.append(timed(lambda: docker(sock, "build", "-q", "--no-cache", "--network", "none", "-t",
                                           "bench:1", context)))
        cached.append(timed(lambda: docker(sock, "build", "-q", "--network", "none", "-t", "bench:1", context)))
    out = docker(sock, "run", "--rm", "--network", "none", "bench:1", check=False).stdout.decode().strip()
    if not out.isdigit():
        print(f"warning: the built image printed {out!r} instead of a byte count", file=sys.stderr)
    return {"pull": statistics.median(pulls), "build": statistics.median(builds),
            "cached build": statistics.median(cached)}


def library_figures(image: str, work: str, runs: int) -> dict[str, float]:
    """The image store alone (no HTTP API, no CLI): pull, save, load of the same image."""
    pulls, saves, loads = [], [], []
    for n in range(runs):
        service = ImageService(ImageStore(os.path.join(work, f"lib-{n}")))
        pulls.append(timed(lambda: list(service.pull(image))))
        archive_path = os.path.join(work, f"lib-{n}.tar")

        def save() -> None:
            with open(archive_path, "wb") as f:
                for chunk in service.save([image]):
                    f.write(chunk)

        saves.append(timed(save))
        fresh = ImageService(ImageStore(os.path.join(work, f"lib-load-{n}")))
        with open(archive_path, "rb") as f:
            loads.append(timed(lambda: fresh.load(f)))
        shutil.rmtree(os.path.join(work, f"lib-{n}"))
        shutil.rmtree(os.path.join(work, f"lib-load-{n}"))
        os.unlink(archive_path)
    return {"pull": statistics.median(pulls), "save": statistics.median(saves), "load": statistics.median(loads)}


def run(runs: int, size_mb: int) -> dict[str, dict[str, float]]:
    """Medians in seconds for both daemons and the store alone; ``floor``: cp and tar of ``size_mb`` on this disk."""
    work = tempfile.mkdtemp(prefix=f"images-bench-{os.getpid()}-", dir="/tmp")
    procs: list[subprocess.Popen] = []
    registry = start_registry(os.path.join(work, "registry"))
    try:
        image = f"{registry.host}/bench/data:1"
        store = ImageStore(os.path.join(work, "seed"))
        make_image(store, image, size_mb, work)
        for _ in ImageService(store).push(image):
            pass
        floor = copy_floor(big_file(Path(work) / "big", size_mb), Path(work))
        os.unlink(os.path.join(work, "big"))
        context = os.path.join(work, "context")
        os.makedirs(os.path.join(context, "files"))
        for n in range(200):
            with open(os.path.join(context, "files", f"c{n:03d}"), "w") as f:
                f.write(f"line {n}\n" * 50)
        with open(os.path.join(context, "Dockerfile"), "w") as f:
            f.write(DOCKERFILE.format(image=image))
        ours_sock, docker_sock = os.path.join(work, "ours.sock"), os.path.join(work, "docker.sock")
        ours = start([sys.executable, "-m", "machines.runtime", "daemon", "--data-root", os.path.join(work, "ours"),
                      "--exec-root", os.path.join(work, "ours-run"), "-H", "unix://" + ours_sock,
                      "--bridge-subnet", "172.31.251.0/24", "--bridge-name", f"imgbench{os.getpid() % 1000}"],
                     ours_sock, os.path.join(work, "ours.log"))
        procs.append(ours)
        dockerd = start(["dockerd", "--data-root", os.path.join(work, "docker"), "--exec-root",
                         os.path.join(work, "docker-run"), "--pidfile", os.path.join(work, "docker.pid"),
                         "-H", "unix://" + docker_sock, "--bridge=none", "--iptables=false", "--ip-forward=false",
                         "--ip-masq=false", "--cgroup-parent", CGROUP_PARENT],
                        docker_sock, os.path.join(work, "dockerd.log"))
        procs.append(dockerd)
        return {"machines runtime": measure(ours_sock, image, context, runs),
                "dockerd (Debian docker.io)": measure(docker_sock, image, context, runs),
                "library": library_figures(image, work, runs), "floor": floor}
    finally:
        for proc in reversed(procs):
            stop(proc)
        registry.stop()
        subprocess.run(["umount", "-R", "-l", os.path.join(work, "docker")], stderr=subprocess.DEVNULL,
                       check=False)
        shutil.rmtree(work, ignore_errors=True)
        for folder in glob.glob("/sys/fs/cgroup/*" + CGROUP_PARENT):
            try:
                os.rmdir(folder)
            except OSError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=32)
    opts = parser.parse_args()
    if shutil.which("dockerd") is None:
        sys.exit("dockerd is missing: apt-get install --no-install-recommends docker.io")
    results = run(opts.runs, opts.size_mb)
    print(f"\n{opts.size_mb} MiB layer + busybox, {opts.runs} runs, medians in seconds\n")
    print("| daemon | pull | build (no cache) | cached rebuild |")
    print("|---|---|---|---|")
    for name in ("machines runtime", "dockerd (Debian docker.io)"):
        r = results[name]
        print(f"| {name} | {r['pull']:.3f} | {r['build']:.3f} | {r['cached build']:.3f} |")
    lib, floor = results["library"], results["floor"]
    print("\nImage store alone (library calls): pull {:.3f} s, save {:.3f} s, load {:.3f} s".format(
        lib["pull"], lib["save"], lib["load"]))
    print("Same disk: cp {:.3f} s, tar out and in {:.3f} s".format(floor["cp_s"], floor["tar_s"]))


if __name__ == "__main__":
    main()
