"""Per-container helper processes carry their own name and the container id in ``ps``, not the daemon's command."""

from __future__ import annotations

import subprocess
import time

from tests.support.daemon import Daemon


def ps() -> dict[int, dict[str, str]]:
    """pid -> ppid, comm and args as the host's ``ps`` shows them."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,comm=,args="], capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        pid, ppid, comm, *args = line.split(None, 3)
        table[int(pid)] = {"ppid": ppid, "comm": comm, "args": args[0] if args else ""}
    return table


def test_shim_exec_and_init_processes_are_named(daemon: Daemon, image: str, name: str) -> None:
    daemon.out("run", "-d", "--init", "--name", name, image, "sleep", "300")
    try:
        cid = daemon.out("inspect", "-f", "{{.Id}}", name).strip()
        pid = int(daemon.out("inspect", "-f", "{{.State.Pid}}", name))
        table = ps()
        shim = table[int(table[pid]["ppid"])]
        assert shim["args"].rstrip() == f"machines-shim {cid}"
        assert shim["comm"] == "shim-" + cid[:10]
        assert table[pid]["args"].rstrip() == "init -- sleep 300"
        daemon_args = table[daemon.process.pid]["args"]
        assert not any(row["args"] == daemon_args for other, row in table.items() if other != daemon.process.pid)

        daemon.out("exec", "-d", name, "sleep", "271")
        deadline = time.monotonic() + 10
        while True:
            table = ps()
            sleeper = [p for p, row in table.items() if row["args"] == "sleep 271"]
            if sleeper or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        monitor = table[int(table[sleeper[0]]["ppid"])]
        assert monitor["args"].rstrip() == f"machines-exec {cid}"
        assert monitor["comm"] == "exec-" + cid[:10]
    finally:
        daemon.docker("rm", "-f", name)
