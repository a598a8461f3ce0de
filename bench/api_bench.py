"""API benchmark: ``docker run --rm IMAGE true`` and ``GET /containers/json`` through our daemon and, when Debian's
docker.io is installed, through its dockerd, in one run on the same machine with the same busybox image.

    .venv/bin/python bench/api_bench.py [--runs 20] [--seconds 3] [--containers 20] [--cp-mb 1024] [--no-dockerd]

Also the daemon's memory (idle and with ``--containers`` running, monitors or containerd and shims included) and a
``docker cp`` of a ``--cp-mb`` file into a container and back, against ``cp`` and ``tar`` on the same disk.

dockerd is started by hand with ``--iptables=false --ip-forward=false --ip-masq=false`` so it leaves the host's
firewall and forwarding alone; afterwards its docker0 link and the cgroup folders it made are removed and it is
stopped by PID. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.procs import big_file, copy_floor, daemon_memory  # noqa: E402
from tests.support.daemon import stop_daemon  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCKER = shutil.which("docker", path="/usr/local/bin:/usr/bin") or "docker"
DOCKERD = shutil.which("dockerd", path="/usr/sbin:/usr/bin")
IMAGE = "bench/busybox:latest"
CGROUP = Path("/sys/fs/cgroup")


class UnixConnection(http.client.HTTPConnection):
    """Keep-alive HTTP over a unix socket, as the docker clients use it."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def wait_for_socket(path: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode}")
        try:
            connection = UnixConnection(path)
            connection.request("GET", "/_ping")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"daemon at {path} did not answer")


def docker(socket_path: str, *args: str, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
    env["DOCKER_HOST"] = "unix://" + socket_path
    return subprocess.run([DOCKER, *args], input=input, capture_output=True, env=env, check=True, timeout=timeout)


def timed(action: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def requests_per_second(socket_path: str, path: str, seconds: float, clients: int) -> float:
    """Keep-alive clients calling ``path`` as fast as they can for ``seconds``."""
    counts = [0] * clients
    deadline = time.monotonic() + seconds

    def work(index: int) -> None:
        connection = UnixConnection(socket_path)
        while time.monotonic() < deadline:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
            counts[index] += 1
        connection.close()

    threads = [threading.Thread(target=work, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / seconds


@dataclasses.dataclass
class Settings:
    """What one run measures: repetitions, seconds per throughput figure, containers for memory, cp size."""

    runs: int = 20
    seconds: float = 3.0
    containers: int = 20
    cp_mb: int = 1024


def docker_cp(socket_path: str, source: Path, work: Path) -> dict[str, float]:
    """Seconds to copy ``source`` into a stopped container and back out (``docker cp`` both ways)."""
    container = docker(socket_path, "create", IMAGE, "true").stdout.decode().strip()
    back = work / "cp-back"
    back.mkdir()
    try:
        started = time.perf_counter()
        docker(socket_path, "cp", str(source), f"{container}:/big")
        into = time.perf_counter() - started
        started = time.perf_counter()
        docker(socket_path, "cp", f"{container}:/big", str(back / "big"))
        os.sync()
        out = time.perf_counter() - started
    finally:
        docker(socket_path, "rm", "-f", container)
        shutil.rmtree(back)
    return {"cp_in_s": into, "cp_out_s": out}


def measure(socket_path: str, rootfs: bytes, settings: Settings, daemon_pid: int, work: Path,
            big: Path | None = None) -> dict[str, object]:
    runs, seconds = settings.runs, settings.seconds
    docker(socket_path, "import", "-", IMAGE, input=rootfs)
    idle = daemon_memory(daemon_pid, str(work))
    for _ in range(2):  # warm caches (page cache, first bridge setup)
        docker(socket_path, "run", "--rm", IMAGE, "true")
    run = timed(lambda: docker(socket_path, "run", "--rm", IMAGE, "true"), runs)
    created = [docker(socket_path, "create", IMAGE, "true").stdout.decode().strip() for _ in range(10)]
    ps = timed(lambda: docker(socket_path, "ps", "-a"), runs)
    version = json.loads(docker(socket_path, "version", "--format", "{{json .Server}}").stdout)["ApiVersion"]
    path = f"/v{version}/containers/json?all=1"
    result: dict[str, object] = {
        "run_rm_true_ms": {"median": statistics.median(run), "min": min(run), "max": max(run)},
        "docker_ps_ms": {"median": statistics.median(ps)},
        "containers_json_rps_1_client": requests_per_second(socket_path, path, seconds, 1),
        "containers_json_rps_8_clients": requests_per_second(socket_path, path, seconds, 8),
        "ping_rps_1_client": requests_per_second(socket_path, "/_ping", seconds, 1),
        "ping_rps_8_clients": requests_per_second(socket_path, "/_ping", seconds, 8),
        "memory_idle": idle,
    }
    docker(socket_path, "rm", *created)
    running = [docker(socket_path, "run", "-d", "--network", "none", IMAGE, "sleep", "600").stdout.decode().strip()
               for _ in range(settings.containers)]
    try:
        memory = daemon_memory(daemon_pid, str(work))
        memory["containers"] = settings.containers
        memory["per_container_helper_mib"] = (memory["helpers_mib"] - idle["helpers_mib"]) / max(settings.containers, 1)
        result["memory_running"] = memory
    finally:
        if running:
            docker(socket_path, "rm", "-f", *running, timeout=900)  # dockerd took over 120 s for 100
    if big is not None:
        result["docker_cp"] = docker_cp(socket_path, big, work)
    return result


@contextlib.contextmanager
def ours_running(work: Path, tag: str = "ours", tree: Path = REPO, octet: int = 196,
                 extra: tuple[str, ...] = ()) -> Iterator[tuple[str, int]]:
    """Our daemon from the checkout ``tree`` on its own socket, bridge and 10.``octet``.N.0/24, with ``extra``
    arguments (another listener): (socket, pid)."""
    sock = str(work / f"{tag}.sock")
    pid = os.getpid()
    process = subprocess.Popen(
        [sys.executable, "-m", "machines.runtime", "daemon", "--data-root", str(work / f"{tag}-data"), "--exec-root",
         str(work / f"{tag}-exec"), "--host", "unix://" + sock, "--pidfile", str(work / f"{tag}.pid"),
         "--bridge-name", f"b{tag[:4]}{pid % 100000}", "--bridge-subnet", f"10.{octet}.{pid % 250}.0/24", *extra],
        cwd=str(tree), env=dict(os.environ, PYTHONPATH=str(tree)), stdout=subprocess.DEVNULL,
        stderr=(work / f"{tag}.log").open("wb"), start_new_session=True)
    try:
        wait_for_socket(sock, process)
        yield sock, process.pid
    finally:
        stop_daemon(process)


def bench_ours(work: Path, rootfs: bytes, settings: Settings, big: Path | None = None) -> dict[str, object]:
    with ours_running(work, "ours") as (sock, pid):
        return measure(sock, rootfs, settings, pid, work, big)


def _cgroup_dirs() -> set:
    return {str(path) for path in CGROUP.glob("*/docker")} | {str(path) for path in CGROUP.glob("docker")}


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def bench_dockerd(work: Path, rootfs: bytes, settings: Settings, big: Path | None = None) -> dict[str, object]:
    with dockerd_running(work) as (sock, pid):
        return measure(sock, rootfs, settings, pid, work, big)


@contextlib.contextmanager
def dockerd_running(work: Path, extra: tuple[str, ...] = ()) -> Iterator[tuple[str, int]]:
    """Debian's dockerd on its own socket and roots with ``extra`` arguments, everything it changed undone
    afterwards: (socket, pid)."""
    sock = str(work / "dockerd.sock")
    had_docker0 = _link_exists("docker0")
    cgroups_before = _cgroup_dirs()
    process = subprocess.Popen(
        [DOCKERD, "--data-root", str(work / "dockerd-data"), "--exec-root", str(work / "dockerd-exec"),
         "--pidfile", str(work / "dockerd.pid"), "-H", "unix://" + sock, "--iptables=false", "--ip-forward=false",
         "--ip-masq=false", *extra],
        stdout=subprocess.DEVNULL, stderr=(work / "dockerd.log").open("wb"), start_new_session=True)
    try:
        wait_for_socket(sock, process)
        yield sock, process.pid
    finally:
        stop_daemon(process)
        if not had_docker0 and _link_exists("docker0"):
            subprocess.run(["ip", "link", "del", "docker0"], capture_output=True)
        for folder in sorted(_cgroup_dirs() - cgroups_before, reverse=True):
            for child in sorted(Path(folder).glob("**/"), key=lambda p: len(str(p)), reverse=True):
                try:
                    child.rmdir()
                except OSError:
                    pass
        subprocess.run(["umount", "-R", str(work / "dockerd-data")], capture_output=True)
        subprocess.run(["umount", "-R", str(work / "dockerd-exec")], capture_output=True)


def run(settings: Settings, with_dockerd: bool = True) -> dict[str, object]:
    """Every figure for our daemon and, when installed and wanted, for dockerd; ``floor``: cp and tar of the file."""
    rootfs = subprocess.run(["bash", str(REPO / "scripts" / "busybox-rootfs.sh")], capture_output=True,
                            check=True).stdout
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="api-bench-", dir="/var/tmp") as folder:
        work = Path(folder)
        big = big_file(work / "big", settings.cp_mb) if settings.cp_mb else None
        if big is not None:
            results["floor"] = copy_floor(big, work)
        results["machines-runtime"] = bench_ours(work, rootfs, settings, big)
        if DOCKERD and with_dockerd:
            results["dockerd"] = bench_dockerd(work, rootfs, settings, big)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="docker run / docker ps repetitions")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each requests/second measurement")
    parser.add_argument("--containers", type=int, default=20, help="running containers for the memory figure")
    parser.add_argument("--cp-mb", type=int, default=1024, help="size of the docker cp file (0: skip)")
    parser.add_argument("--no-dockerd", action="store_true", help="measure our daemon only")
    args = parser.parse_args()
    settings = Settings(args.runs, args.seconds, args.containers, args.cp_mb)
    print(json.dumps(run(settings, not args.no_dockerd), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
