"""The daemon is SIGKILLed and restarted: running containers keep running (and logging), exited ones keep their
exit codes, containers that died meanwhile are closed with the code their shim recorded, policies apply."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from machines.runtime.engine import Engine
from machines.runtime.linux import syscalls
from tests.engine.conftest import cleanup_engine, launchers_of, make_roots, output, read_session, wait_for

DAEMON = textwrap.dedent("""
    import io, json, sys, time
    from machines.runtime.engine import Engine
    data, run, image = sys.argv[1:4]
    engine = Engine(data, run)
    with open(image, "rb") as f:
        engine.images.import_tar(f, repo_tag="busybox:latest")
    def start(cmd, **host):
        host.setdefault("NetworkMode", "none")
        cid = engine.create_container({"Image": "busybox", "Cmd": cmd, "HostConfig": host})["Id"]
        engine.start(cid)
        return cid
    ids = {
        "ticker": start(["sh", "-c", "while true; do echo tick; sleep 0.1; done"]),
        "exited": start(["sh", "-c", "exit 7"]),
        "dies_later": start(["sh", "-c", "sleep 1; exit 5"]),
        "always": start(["sh", "-c", "sleep 1; exit 1"], RestartPolicy={"Name": "always"}),
    }
    engine.wait(ids["exited"])
    print(json.dumps(ids), flush=True)
    time.sleep(600)
""")


def test_sigkill_of_the_daemon_loses_nothing(busybox_tar: bytes, tmp_path: Path) -> None:
    base, data, run = make_roots()
    image = tmp_path / "busybox.tar"
    image.write_bytes(busybox_tar)
    # Shims orphaned by the killed daemon are re-parented here (not to PID 1), so the test can reap them.
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON, data, run, str(image)], stdout=subprocess.PIPE)
    engine = None
    lingering = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ids = json.loads(daemon.stdout.readline())
        launchers = launchers_of(daemon.pid)
        assert len(launchers) == 1, "the daemon's monitors come from one launcher"
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(10)
        # The launcher goes with the daemon (its socket's end of file); it is re-parented here and waits to be reaped.
        wait_for(lambda: launchers[0] not in launchers_of(os.getpid()), what="the launcher to exit with its daemon")
        log_path = os.path.join(data, "containers", ids["ticker"], ids["ticker"] + "-json.log")
        size = os.path.getsize(log_path)
        for key in ("dies_later", "always"):  # they exit while no daemon runs; their shims record it
            exit_file = os.path.join(data, "containers", ids[key], "exit.json")
            wait_for(lambda: os.path.exists(exit_file), what="the exit of " + key)
        assert os.path.getsize(log_path) > size, "the shim keeps logging without the daemon"
        # A shim that has recorded the exit still listens until it has told its clients: stand in for one.
        with open(os.path.join(data, "containers", ids["dies_later"], "config.v2.json")) as f:
            lingering.bind(json.load(f)["_socket"])
        lingering.listen(1)

        engine = Engine(data, run)
        ticker = engine.inspect_container(ids["ticker"])["State"]
        assert ticker["Running"] is True and os.path.exists(f'/proc/{ticker["Pid"]}')
        assert engine.inspect_container(ids["exited"])["State"]["ExitCode"] == 7
        later = engine.inspect_container(ids["dies_later"])["State"]
        assert later["Status"] == "exited" and later["ExitCode"] == 5
        always = engine.inspect_container(ids["always"])
        assert always["State"]["Running"] is True and not always["State"]["FinishedAt"].startswith("0001")

        eid = engine.exec_create(ids["ticker"], {"Cmd": ["echo", "still here"]})
        assert read_session(engine.exec_start(eid)) == b"still here\n"
        assert "tick" in output(engine, ids["ticker"])
        engine.stop(ids["ticker"], timeout=0)
        assert engine.wait(ids["ticker"])["StatusCode"] == 137
        wait_for(lambda: not engine.inspect_container(ids["ticker"])["State"]["Running"], what="stop")
    finally:
        lingering.close()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if engine is None:
            engine = Engine(data, run)
        cleanup_engine(engine)
        shutil.rmtree(base, ignore_errors=True)
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 0)
        reap_orphans()


def reap_orphans() -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)
