"""Per-container exit watching and restart policies (moby's daemon/monitor.go and restartmanager).

One thread per running container follows its shim's monitor socket; when the container exits it closes the books
(state, exit code, events), then restarts it by policy or removes it (``--rm``).
"""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Callable

from machines.runtime.engine.config import ZERO_TIME
from machines.runtime.engine.container import Container, ContainerTable, now, parse_time
from machines.runtime.engine.exec import ExecManager
from machines.runtime.engine.health import HealthChecker
from machines.runtime.engine.shim import EXIT, recv_frame
from machines.runtime.errors import EngineError

RESTART_BACKOFF_MAX = 1.0


class Monitor:
    """Exit handling for the containers of one table. ``start``, ``release_network`` and ``remove`` are the
    engine's own operations (a restart is a start; an auto-removed container is removed like ``rm -f -v``)."""

    def __init__(self, table: ContainerTable, execs: ExecManager, health: HealthChecker, *,
                 start: Callable[[Container], None], release_network: Callable[[Container], None],
                 remove: Callable[[str], None]) -> None:
        self._table = table
        self._execs = execs
        self._health = health
        self._start = start
        self._release_network = release_network
        self._remove = remove

    def follow(self, c: Container, sock: socket.socket, start_id: str) -> None:
        """Watches one run of the container (``start_id``) on its shim's monitor socket, in a thread (the launcher
        that forked the shim reaps it)."""
        threading.Thread(target=self._watch, args=(c, sock, start_id),
                         name="watch-" + c.id[:12], daemon=True).start()

    def _watch(self, c: Container, sock: socket.socket, start_id: str) -> None:
        record = None
        try:
            while True:
                frame = recv_frame(sock)
                if frame is None:
                    break
                if frame[0] == EXIT:
                    record = json.loads(frame[1])
                    break
        except (OSError, ValueError):
            pass
        sock.close()
        if not self._table.closed:
            self.exited(c, start_id, record)

    @staticmethod
    def read_exit(c: Container, start_id: str) -> dict | None:
        """The exit record the shim wrote for this run, if it did (it outlives a killed daemon)."""
        try:
            with open(c.file("exit.json")) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        return record if record.get("StartId") == start_id else None

    def exited(self, c: Container, start_id: str, record: dict | None) -> None:
        record = record or self.read_exit(c, start_id) or {"ExitCode": 255, "OOMKilled": False,
                                                            "FinishedAt": now()}
        table = self._table
        with table.lock:  # claimed here: the watcher and a waiter's re-check (Engine._wait_exit) never both close it
            if c.data.get("_start_id") != start_id or not c.running or c.closing == start_id:
                return
            c.closing = start_id
        self._health.stop(c)
        self._release_network(c)  # outside the table lock: it runs `ip` and touches iptables
        with table.lock:
            code = int(record["ExitCode"])
            c.state.update({"Status": "exited", "Running": False, "Paused": False, "Pid": 0, "ExitCode": code,
                            "OOMKilled": bool(record.get("OOMKilled")), "FinishedAt": record["FinishedAt"]})
            restart = self.should_restart(c, code)
            if restart:
                c.state.update({"Status": "restarting", "Restarting": True})
            table.save(c)
            self._execs.container_exited(c.id)
            # The events go out before waiters wake (moby logs die before SetStopped), so whoever returns from
            # a wait or a stop finds "die" already in the event stream, never after its own next events.
            if record.get("OOMKilled"):
                table.emit(c, "oom")
            table.emit(c, "die", exitCode=str(code))
            c.exit_seq += 1
            table.cond.notify_all()
        if restart:
            self._schedule_restart(c, start_id)
        elif c.data["HostConfig"].get("AutoRemove"):
            try:
                self._remove(c.id)
            except EngineError:
                pass

    def should_restart(self, c: Container, code: int) -> bool:
        """moby's restart manager: a cancelled exit never restarts; unless-stopped also respects a manual stop."""
        if c.exit_on_next or c.removed or self._table.closed:
            return False
        policy = c.data["HostConfig"]["RestartPolicy"]
        name = policy.get("Name") or "no"
        if name == "always":
            return True
        if name == "unless-stopped":
            return not c.data.get("HasBeenManuallyStopped")
        if name == "on-failure" and code != 0:
            limit = policy.get("MaximumRetryCount") or 0
            return limit == 0 or c.data["RestartCount"] < limit
        return False

    def _schedule_restart(self, c: Container, start_id: str) -> None:
        started = c.state.get("StartedAt") or ZERO_TIME
        ran_long = started != ZERO_TIME and time.time() - parse_time(started) > 10
        c.backoff = 0.1 if ran_long or not c.backoff else min(c.backoff * 2, RESTART_BACKOFF_MAX)
        delay = c.backoff
        table = self._table

        def restart() -> None:
            time.sleep(delay)
            with c.lock:
                if c.removed or c.running or table.closed or not c.state.get("Restarting"):
                    return
                if c.data.get("_start_id") != start_id or c.exit_on_next:
                    return
                c.data["RestartCount"] += 1
                try:
                    self._start(c)
                except EngineError as e:
                    with table.lock:
                        c.state.update({"Restarting": False, "Status": "exited", "Error": str(e)})
                        table.save(c)
                    return
            table.emit(c, "restart")

        threading.Thread(target=restart, name="restart-" + c.id[:12], daemon=True).start()

