"""Latency of the streamed answers (issue 18 item 2: nothing on the path waits for a timer), through this checkout's
daemon, the daemon of an older revision and Debian's dockerd, interleaved round by round as ``api_interleaved.py``
does, each over its unix socket and over mutual TLS on TCP:

- ``docker exec C true`` (the docker CLI);
- docker-py's ``exec_run`` of ``echo x`` (``exec_create`` + ``exec_start``), the output checked;
- docker-py's ``attach`` with ``logs=True`` to an exited container (its output, then the end of the stream);
- ``logs -f``: from a container's write to a docker-py follower having the line (the container echoes what the
  benchmark writes into a FIFO bind-mounted into it).

    .venv/bin/python bench/stream_latency.py [--base REV] [--rounds 20]

Without ``--base`` only this checkout's daemon and dockerd (``python -m bench`` runs it so). Prints JSON: medians in
ms, their ratios to dockerd, outputs lost per measure (docker-py missing or cutting an answer), the load average
before and after. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.api_bench import DOCKER, IMAGE, REPO, docker, dockerd_running, ours_running  # noqa: E402
from bench.api_interleaved import command_line, export_revision, load_average  # noqa: E402
from tests.support.daemon import make_pki  # noqa: E402

for _variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests would ignore our CA (psf/requests#3829)
    os.environ.pop(_variable, None)

import docker as dockerpy  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Target:
    """One daemon: its two transports for the CLI and docker-py, and the containers the rounds use."""

    def __init__(self, name: str, sock: str, port: int, pki: dict[str, Path], work: Path) -> None:
        self.name = name
        base = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
        self.env = {"unix": dict(base, DOCKER_HOST="unix://" + sock),
                    "tls": dict(base, DOCKER_HOST=f"tcp://127.0.0.1:{port}", DOCKER_TLS_VERIFY="1",
                                DOCKER_CERT_PATH=str(pki["ca"].parent))}
        tls = dockerpy.tls.TLSConfig(client_cert=(str(pki["client-cert"]), str(pki["client-key"])),
                                     ca_cert=str(pki["ca"]), verify=True)
        self.api = {"unix": dockerpy.APIClient(base_url="unix://" + sock, version="1.41", timeout=60),
                    "tls": dockerpy.APIClient(base_url=f"https://127.0.0.1:{port}", version="1.41", tls=tls,
                                              timeout=60)}
        self.fifo = work / f"fifo-{name}" / "p"
        self.fifo.parent.mkdir()
        os.mkfifo(self.fifo)
        run = self.api["unix"]
        self.sleeper = run.create_container(IMAGE, ["sleep", "100000"])["Id"]
        run.start(self.sleeper)
        self.exited = run.create_container(IMAGE, ["echo", "hello"])["Id"]
        run.start(self.exited)
        run.wait(self.exited)
        self.echo = run.create_container(IMAGE, ["sh", "-c", 'while :; do read line < /f/p; echo "$line"; done'],
                                         host_config=run.create_host_config(binds=[f"{self.fifo.parent}:/f"]))["Id"]
        run.start(self.echo)
        self.seen: dict[tuple[str, str], float] = {}
        self.seen_cond = threading.Condition()
        for transport in self.api:
            threading.Thread(target=self._follow, args=(transport,), daemon=True).start()

    def _follow(self, transport: str) -> None:
        for chunk in self.api[transport].logs(self.echo, stream=True, follow=True, tail=0):
            now = time.perf_counter()
            with self.seen_cond:
                for line in chunk.decode().split():
                    self.seen[(transport, line)] = now
                self.seen_cond.notify_all()

    def cli_exec(self, transport: str) -> tuple[float, bool]:
        started = time.perf_counter()
        subprocess.run([DOCKER, "exec", self.sleeper, "true"], env=self.env[transport], check=True,
                       capture_output=True, timeout=60)
        return time.perf_counter() - started, True

    def exec_run(self, transport: str) -> tuple[float, bool]:
        api = self.api[transport]
        started = time.perf_counter()
        out = api.exec_start(api.exec_create(self.sleeper, ["echo", "x"])["Id"])
        return time.perf_counter() - started, out == b"x\n"

    def attach(self, transport: str) -> tuple[float, bool]:
        started = time.perf_counter()
        out = self.api[transport].attach(self.exited, stdout=True, stderr=True, logs=True, stream=False)
        return time.perf_counter() - started, out == b"hello\n"

    def logs_follow(self, line: str) -> dict[str, float]:
        """Write ``line`` into the echoing container; seconds until each follower had it."""
        with open(self.fifo, "w") as fifo:  # opens once the container's ``read`` waits on the other end
            started = time.perf_counter()
            fifo.write(line + "\n")
        with self.seen_cond:
            done = self.seen_cond.wait_for(lambda: all((t, line) in self.seen for t in self.api), timeout=30)
        if not done:
            raise RuntimeError(f"{self.name}: logs -f did not deliver {line!r}")
        return {transport: self.seen[(transport, line)] - started for transport in self.api}

    def close(self) -> None:
        for container in (self.sleeper, self.exited, self.echo):
            self.api["unix"].remove_container(container, force=True)
        for api in self.api.values():
            api.close()


def run(base: str | None, rounds: int) -> dict[str, Any]:
    rootfs = subprocess.run(["bash", str(REPO / "scripts" / "busybox-rootfs.sh")], capture_output=True,
                            check=True).stdout
    with tempfile.TemporaryDirectory(prefix="stream-latency-", dir="/var/tmp") as folder, \
            contextlib.ExitStack() as stack:
        work = Path(folder)
        pki = make_pki(work / "pki")
        tree = work / "base-tree"
        if base:
            export_revision(base, tree)
        targets: dict[str, Target] = {}
        for name in (["base"] if base else []) + ["this", "dockerd"]:
            port = _free_port()
            extra = ("--host", f"tcp://127.0.0.1:{port}", "--tlsverify", "--tlscacert", str(pki["ca"]),
                     "--tlscert", str(pki["server-cert"]), "--tlskey", str(pki["server-key"]))
            if name == "dockerd":
                sock, _ = stack.enter_context(dockerd_running(work, extra))
            else:
                sock, _ = stack.enter_context(ours_running(work, name, tree if name == "base" else REPO,
                                                           octet=191 if name == "base" else 192, extra=extra))
            docker(sock, "import", "-", IMAGE, input=rootfs)
            targets[name] = Target(name, sock, port, pki, work)
            stack.callback(targets[name].close)
        measures = {f"{what}_{transport}": (what, transport) for what in ("cli_exec", "exec_run", "attach")
                    for transport in ("unix", "tls")}
        samples: dict[str, dict[str, list[float]]] = {key: {name: [] for name in targets} for key in measures}
        for transport in ("unix", "tls"):
            samples[f"logs_follow_{transport}"] = {name: [] for name in targets}
        lost = {key: {name: 0 for name in targets} for key in measures}
        for target in targets.values():  # warm up: first connections, first exec
            for what, transport in measures.values():
                getattr(target, what)(transport)
        before = load_average()
        names = list(targets)
        for index in range(rounds):
            order = names[index % len(names):] + names[:index % len(names)]
            for key, (what, transport) in measures.items():
                for name in order:
                    seconds, intact = getattr(targets[name], what)(transport)
                    samples[key][name].append(seconds * 1000)
                    lost[key][name] += not intact
            for name in order:
                for transport, seconds in targets[name].logs_follow(f"line{index}").items():
                    samples[f"logs_follow_{transport}"][name].append(seconds * 1000)
        result: dict[str, Any] = {"base": base, "rounds": rounds, "load_before": before, "load_after": load_average(),
                                  "lost_outputs": lost}
        for key, by_daemon in samples.items():
            medians = {name: statistics.median(values) for name, values in by_daemon.items()}
            result[key + "_ms"] = {name: round(value, 2) for name, value in medians.items()}
            result[key + "_ratio_to_dockerd"] = {name: round(medians[name] / medians["dockerd"], 3)
                                                 for name in targets if name != "dockerd"}
        return result


if __name__ == "__main__":
    sys.exit(command_line(__doc__, run, None, "an older revision to measure too (a commit, a branch)"))
