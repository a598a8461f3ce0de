"""Every comparison of issue 18 in one run: ``python -m bench [--quick] [--only SECTION ...] [--json FILE]``.

Run as root from the repository root. Each section reuses its module (``engine_bench``, ``api_bench``,
``stream_latency``, ``provision_bench``, ``create_hosts``, ``cli_bench``, ``images_bench``); this file only chooses
sizes, runs them one after the other and prints one markdown table: our median, the peer's median in the same run,
the ratio ours / peer and the issue's target for it. The machine's load average before and after is printed with it:
absolute figures mean little on a busy machine, ratios from one run still do. ``--quick`` shrinks repetitions and
sizes (64 MiB instead of 1 GiB) to finish in a few minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import api_bench, cli_bench, create_hosts, images_bench, provision_bench, stream_latency  # noqa: E402


@dataclasses.dataclass
class Sizes:
    engine_runs: int
    api: api_bench.Settings
    provision_runs: int
    parallel_runs: int
    cli_runs: int
    stream_rounds: int
    ls_machines: int
    image_runs: int
    layer_mb: int


FULL = Sizes(20, api_bench.Settings(20, 3.0, 100, 1024), 5, 3, 10, 30, 100, 2, 1024)
QUICK = Sizes(7, api_bench.Settings(5, 1.0, 10, 64), 2, 1, 5, 8, 100, 1, 64)


@dataclasses.dataclass
class Row:
    """One line of the table; ``lower_is_better`` says which way the target ratio points."""

    what: str
    ours: float
    unit: str
    peer: str
    peer_value: float
    target: float
    lower_is_better: bool = True

    @property
    def ratio(self) -> float:
        return self.ours / self.peer_value if self.peer_value else float("inf")

    @property
    def met(self) -> bool:
        return self.ratio <= self.target if self.lower_is_better else self.ratio >= self.target


def engine(sizes: Sizes) -> list[Row]:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "engine_bench.py"), "-n", str(sizes.engine_runs)],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    ours = figures["engine"]["median_ms"]
    rows = [Row("create+start+wait+rm /bin/true (engine)", ours, "ms", tool, figures[tool]["median_ms"], 1.0)
            for tool in ("crun", "runc") if tool in figures]
    rows.append(Row("create+start+wait+rm /bin/true (engine)", ours, "ms", "unshare+chroot floor",
                    figures["unshare+chroot"]["median_ms"], 1.0))
    return rows


def api(sizes: Sizes) -> list[Row]:
    figures = api_bench.run(sizes.api)
    ours, peer = figures["machines-runtime"], figures.get("dockerd")
    if peer is None:
        raise RuntimeError("dockerd is not installed: apt-get install --no-install-recommends docker.io")
    rows = [Row("`docker run --rm IMG true`", ours["run_rm_true_ms"]["median"], "ms", "dockerd",
                peer["run_rm_true_ms"]["median"], 1 / 3),
            Row("`docker ps -a`", ours["docker_ps_ms"]["median"], "ms", "dockerd", peer["docker_ps_ms"]["median"], 1.0)]
    for key, what in (("ping_rps_1_client", "`GET /_ping`, 1 client"), ("ping_rps_8_clients", "`GET /_ping`, 8 clients"),
                      ("containers_json_rps_1_client", "`GET /containers/json`, 1 client"),
                      ("containers_json_rps_8_clients", "`GET /containers/json`, 8 clients")):
        rows.append(Row(what, ours[key], "req/s", "dockerd", peer[key], 1.0, lower_is_better=False))
    count = ours["memory_running"]["containers"]
    rows += [Row("daemon RSS, idle", ours["memory_idle"]["total_mib"], "MiB", "dockerd+containerd",
                 peer["memory_idle"]["total_mib"], 1.0),
             Row(f"daemon RSS + helpers, {count} running", ours["memory_running"]["total_mib"], "MiB",
                 "dockerd+containerd+shims", peer["memory_running"]["total_mib"], 1.0),
             Row(f"daemon PSS + helpers, {count} running", ours["memory_running"]["total_pss_mib"], "MiB",
                 "dockerd+containerd+shims", peer["memory_running"]["total_pss_mib"], 1.0),
             Row("RSS per running container (monitor / shim)", ours["memory_running"]["per_container_helper_mib"],
                 "MiB", "containerd-shim", peer["memory_running"]["per_container_helper_mib"], 1.0)]
    if "floor" in figures:
        size = sizes.api.cp_mb
        floor = figures["floor"]
        for direction, what in (("cp_in_s", "into"), ("cp_out_s", "out of")):
            rows.append(Row(f"`docker cp` {size} MiB {what} a container", size / ours["docker_cp"][direction], "MB/s",
                            "`tar` out+in, same disk", size / floor["tar_s"], 1.0, lower_is_better=False))
            rows.append(Row(f"`docker cp` {size} MiB {what} a container", size / ours["docker_cp"][direction], "MB/s",
                            "dockerd", size / peer["docker_cp"][direction], 1.0, lower_is_better=False))
    return rows


STREAMS = {"cli_exec": "`docker exec C true`", "exec_run": "docker-py `exec_run`",
           "attach": "docker-py `attach` (logs of an exited container)",
           "logs_follow": "`logs -f`: container write to client"}


def streams(sizes: Sizes) -> list[Row]:
    """Attach, exec and logs latency, interleaved with dockerd round by round, over the unix socket and TLS."""
    figures = stream_latency.run(None, sizes.stream_rounds)

    def lost(measure: str, daemon: str) -> str:  # dockerd loses docker-py's attach output on its unix socket
        count = figures["lost_outputs"].get(measure, {}).get(daemon, 0)
        return f" ({count} of {sizes.stream_rounds} answers lost)" if count else ""

    rows = []
    for key, what in STREAMS.items():
        for transport in ("unix", "tls"):
            measure = f"{key}_{transport}"
            rows.append(Row(f"{what}, {transport}{lost(measure, 'this')}", figures[measure + "_ms"]["this"], "ms",
                            "dockerd" + lost(measure, "dockerd"), figures[measure + "_ms"]["dockerd"], 1.0))
    return rows


def provisioning(sizes: Sizes) -> list[Row]:
    first, _ = provision_bench.phases(sizes.provision_runs, "local")
    after_ssh = sorted(run["total"] - run["detect"] for run in first)[len(first) // 2]
    machines = create_hosts.provisioned(sizes.parallel_runs)
    return [Row("provisioning of a local machine after SSH is up", after_ssh, "s", "target 0.5 s", 0.5, 1.0),
            Row("`machines create` (local, provisioned), 1 machine", machines["one_s"], "s", "target 1.7 s (issue)",
                1.7, 1.0),
            Row("`machines create`, 8 local machines in parallel", machines["eight_s"], "s", "1 machine, same run",
                machines["one_s"], 1.5)]


def cli(sizes: Sizes) -> list[Row]:
    figures = cli_bench.run(sizes.cli_runs, sizes.ls_machines)
    return [Row("`machines version` (CLI start-up), wall", figures["version_s"], "s", "target 0.15 s", 0.15, 1.0),
            Row("`machines version` (CLI start-up), CPU", figures["version_cpu_s"], "s", "target 0.15 s", 0.15, 1.0),
            Row(f"`machines ls` of {sizes.ls_machines} machines, wall", figures["ls_s"], "s", "target 0.5 s", 0.5, 1.0),
            Row(f"`machines ls` of {sizes.ls_machines} machines, CPU", figures["ls_cpu_s"], "s", "target 0.5 s", 0.5,
                1.0)]


def images(sizes: Sizes) -> list[Row]:
    figures = images_bench.run(sizes.image_runs, sizes.layer_mb)
    size = sizes.layer_mb
    ours, peer, floor = figures["machines runtime"], figures["dockerd (Debian docker.io)"], figures["floor"]
    return [Row(f"pull of a {size} MiB layer", size / ours["pull"], "MB/s", "dockerd", size / peer["pull"], 1.0,
                lower_is_better=False),
            Row(f"pull of a {size} MiB layer", size / ours["pull"], "MB/s", "`tar` out+in, same disk",
                size / floor["tar_s"], 1.0, lower_is_better=False),
            Row(f"pull of a {size} MiB layer", size / ours["pull"], "MB/s", "`cp`, same disk", size / floor["cp_s"],
                1.0, lower_is_better=False),
            Row("`docker build` (no cache)", ours["build"], "s", "dockerd", peer["build"], 1.0),
            Row("`docker build` (cached)", ours["cached build"], "s", "dockerd", peer["cached build"], 1.0)]


SECTIONS: dict[str, Callable[[Sizes], list[Row]]] = {
    "engine": engine, "api": api, "streams": streams, "provisioning": provisioning, "cli": cli, "images": images}


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def table(rows: list[Row]) -> list[str]:
    lines = ["| what | ours | peer | peer's | ours / peer | target | met |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        sign = "<=" if row.lower_is_better else ">="
        lines.append(f"| {row.what} | {row.ours:.4g} {row.unit} | {row.peer} | {row.peer_value:.4g} {row.unit} | "
                     f"{row.ratio:.2f} | {sign} {row.target:.2g} | {'yes' if row.met else 'no'} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, 64 MiB instead of 1 GiB")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run only these sections")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (namespaces, cgroups, dockerd)", file=sys.stderr)
        return 1
    sizes = QUICK if args.quick else FULL
    before = load()
    rows: list[Row] = []
    failed: list[str] = []
    for name in args.only or SECTIONS:
        print(f"bench: {name} (load {load()})", file=sys.stderr, flush=True)
        try:
            rows += SECTIONS[name](sizes)
        except Exception:  # noqa: BLE001 - one broken section must not lose the others' figures
            traceback.print_exc()
            failed.append(name)
    print(f"load average (1, 5, 15 min) before: {before}; after: {load()}; {os.cpu_count()} CPUs; "
          f"{'quick' if args.quick else 'full'} run; medians\n")
    print("\n".join(table(rows)))
    if failed:
        print(f"\nfailed sections: {', '.join(failed)} (tracebacks above)")
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
