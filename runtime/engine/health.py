"""Health checks (moby's daemon/health.go): the container's ``Healthcheck`` probe run as an exec on a schedule,
its results in ``State.Health`` and ``health_status`` events on every change of status.

A probe loop runs while the container runs and is not paused. ``State.Health`` is persisted with the container, and
a restarted daemon resets it to ``starting`` and resumes probing, as moby's restore does.
"""
from __future__ import annotations

import os
import signal as signals
import threading
import time

from machines.runtime import timefmt
from machines.runtime.engine.config import go_json_type
from machines.runtime.engine.container import Container, ContainerTable, now, parse_time
from machines.runtime.engine.exec import ExecManager
from machines.runtime.errors import EngineError, InvalidParameter

SECOND = 1_000_000_000
MINIMUM_DURATION = 1_000_000  # moby's container.MinimumDuration (1ms)
DEFAULT_INTERVAL = 30 * SECOND
DEFAULT_TIMEOUT = 30 * SECOND
DEFAULT_START_PERIOD = 0
DEFAULT_START_INTERVAL = 5 * SECOND
DEFAULT_RETRIES = 3
MAX_OUTPUT = 4096
MAX_LOG_ENTRIES = 5
HEALTH_VALUES = ("starting", "healthy", "unhealthy", "none")
_DURATION_FIELDS = ("Interval", "Timeout", "StartPeriod", "StartInterval")


def validate(check: dict | None) -> None:
    """moby's validateHealthCheck, same order and wording (400 at create)."""
    if not check:
        return
    for key in ("Interval", "Timeout", "Retries", "StartPeriod", "StartInterval"):
        value = check.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            kind = "int" if key == "Retries" else "time.Duration"
            raise InvalidParameter(f"json: cannot unmarshal {go_json_type(value)} into Go struct field "
                                   f"HealthConfig.Healthcheck.{key} of type {kind}")
        if key == "Retries":
            if (value or 0) < 0:
                raise InvalidParameter("Retries in Healthcheck cannot be negative")
        elif value and value < MINIMUM_DURATION:
            raise InvalidParameter(f"{key} in Healthcheck cannot be less than {timefmt.format_go_duration(MINIMUM_DURATION)}")


def merge(user: dict | None, image: dict | None) -> dict | None:
    """The container's Healthcheck: the request's, with what it leaves unset (no test, zero values) from the image."""
    if not user:
        return dict(image) if image else None
    out = dict(user)
    if image:
        if not out.get("Test"):
            out["Test"] = image.get("Test")
        for key in _DURATION_FIELDS + ("Retries",):
            if not out.get(key) and image.get(key):
                out[key] = image[key]
    return out


def probe_command(config: dict) -> list[str] | None:
    """The argv a probe runs, or None when there is no check (none configured, ``NONE``, unknown type)."""
    test = list((config.get("Healthcheck") or {}).get("Test") or [])
    if not test:
        return None
    if test[0] == "CMD":
        return test[1:] or None
    if test[0] == "CMD-SHELL":
        return list(config.get("Shell") or ["/bin/sh", "-c"]) + test[1:]
    return None


def filter_value(state: dict) -> str:
    """The value ``--filter health=`` matches: the status, or ``none`` without a health check."""
    health = state.get("Health")
    return health["Status"] if health else "none"


class HealthChecker:
    """One probe loop per running container that has a health check (moby never runs two for one container)."""

    def __init__(self, table: ContainerTable, execs: ExecManager) -> None:
        self._table = table
        self._execs = execs
        self._stops: dict[str, threading.Event] = {}

    def init(self, c: Container) -> None:
        """A start, restart or daemon restore: status back to ``starting``, then probing (moby's
        initHealthMonitor). The log of earlier probes is kept."""
        if probe_command(c.data["Config"]) is None:
            return
        self.stop(c)
        with self._table.lock:
            health = c.state.get("Health") or {"Log": []}
            health.update({"Status": "starting", "FailingStreak": 0})
            c.state["Health"] = health
            self._table.save(c)
        self.update(c)

    def update(self, c: Container) -> None:
        """Runs the probe loop while the container runs unpaused, stops it otherwise (pause, unpause)."""
        with self._table.lock:
            wanted = (c.running and not c.state.get("Paused") and c.state.get("Health") is not None
                      and probe_command(c.data["Config"]) is not None)
            if not wanted:
                stop = self._stops.pop(c.id, None)
                if stop is not None:
                    stop.set()
                return
            if c.id in self._stops:
                return
            stop = self._stops[c.id] = threading.Event()
        threading.Thread(target=self._loop, args=(c, stop), name="health-" + c.id[:12], daemon=True).start()

    def stop(self, c: Container) -> None:
        with self._table.lock:
            stop = self._stops.pop(c.id, None)
        if stop is not None:
            stop.set()

    def close(self) -> None:
        with self._table.lock:
            stops, self._stops = list(self._stops.values()), {}
        for stop in stops:
            stop.set()

    def _loop(self, c: Container, stop: threading.Event) -> None:
        check = c.data["Config"].get("Healthcheck") or {}
        interval = check.get("Interval") or DEFAULT_INTERVAL
        start_interval = check.get("StartInterval") or DEFAULT_START_INTERVAL
        start_period = check.get("StartPeriod") or DEFAULT_START_PERIOD
        started = parse_time(c.state.get("StartedAt") or "")

        def next_wait() -> float:
            """moby: the start period's end is never skipped; while starting inside it, StartInterval applies."""
            elapsed = int((time.time() - started) * SECOND)
            if elapsed >= start_period:
                return interval / SECOND
            remaining = start_period - elapsed
            if remaining < interval:
                return remaining / SECOND
            with self._table.lock:
                starting = (c.state.get("Health") or {}).get("Status") == "starting"
            return (start_interval if starting else interval) / SECOND

        while not stop.wait(next_wait()):
            result = self._probe(c, check)
            if stop.is_set():
                return
            self._record(c, result, check, stop)

    def _probe(self, c: Container, check: dict) -> dict:
        """One run of the check as an exec; a probe that cannot start, or overruns its timeout, scores -1."""
        start = time.time_ns()
        command = probe_command(c.data["Config"]) or []
        timeout = check.get("Timeout") or DEFAULT_TIMEOUT
        cfg = c.data["Config"]
        output = bytearray()
        truncated = False
        try:
            eid = self._execs.create(c.id, {"Cmd": command, "AttachStdout": True, "AttachStderr": True,
                                            "User": cfg.get("User") or "", "WorkingDir": cfg.get("WorkingDir") or ""})
            session = self._execs.start(eid)
        except EngineError as e:
            return {"Start": now(start), "End": now(), "ExitCode": -1, "Output": str(e)}

        def read() -> None:
            nonlocal truncated
            assert session is not None
            while True:
                chunk = session.read()
                if chunk is None:
                    return
                room = MAX_OUTPUT - len(output)
                output.extend(chunk[1][:max(room, 0)])
                truncated = truncated or len(chunk[1]) > room

        reader = threading.Thread(target=read, name="probe-" + c.id[:12], daemon=True)
        reader.start()
        try:
            reader.join(timeout / SECOND)
            if reader.is_alive():
                pid = self._execs.inspect(eid).get("Pid") or 0
                if pid:
                    try:
                        os.kill(pid, signals.SIGKILL)
                    except ProcessLookupError:
                        pass
                reader.join(5)  # a child the probe left behind may hold the pipe: do not wait for it forever
                text = output.decode(errors="replace") + ("..." if truncated else "")
                limit = timefmt.format_go_duration(timeout)
                message = (f"Health check exceeded timeout ({limit}): {text}" if text
                           else f"Health check exceeded timeout ({limit})")
                return {"Start": now(start), "End": now(), "ExitCode": -1, "Output": message}
            code = self._execs.inspect(eid).get("ExitCode")
            text = output.decode(errors="replace") + ("..." if truncated else "")
            return {"Start": now(start), "End": now(), "ExitCode": -1 if code is None else code, "Output": text}
        finally:
            self._execs.discard(eid)

    def _record(self, c: Container, result: dict, check: dict, stop: threading.Event) -> None:
        """moby's handleProbeResult: the last five results, the failing streak, and an event on a new status."""
        retries = check.get("Retries") or DEFAULT_RETRIES
        with self._table.lock:
            health = c.state.get("Health")
            if stop.is_set() or health is None:
                return
            old = health["Status"]
            health["Log"] = (list(health.get("Log") or []) + [result])[-MAX_LOG_ENTRIES:]
            if result["ExitCode"] == 0:
                health.update({"FailingStreak": 0, "Status": "healthy"})
            else:
                start_period = check.get("StartPeriod") or DEFAULT_START_PERIOD
                since_start = parse_time(result["Start"]) - parse_time(c.state.get("StartedAt") or "")
                if not (old == "starting" and since_start * SECOND < start_period):
                    health["FailingStreak"] = health.get("FailingStreak", 0) + 1
                    if health["FailingStreak"] >= retries:
                        health["Status"] = "unhealthy"
            current = health["Status"]
            self._table.save(c)
        if current != old:
            self._table.emit(c, "health_status: " + current)

