"""One container's in-memory handle and the table of all of them (lookup, persistence, events).

The exec, monitor and health modules work over this table rather than over the ``Engine`` facade, so none of them
imports the facade (moby's daemon/exec.go, monitor.go, health.go all receive the same ``container.Container``).
"""
from __future__ import annotations

import os
import threading

from machines.runtime import timefmt
from machines.runtime.engine.events import EventBus
from machines.runtime.engine.sessions import AttachSession
from machines.runtime.engine.shim import write_json
from machines.runtime.errors import InvalidParameter, NotFound


def now(ns: int | None = None) -> str:
    """RFC 3339 with nanoseconds, UTC: of ``ns`` (unix nanoseconds) or of the present."""
    return timefmt.rfc3339_nano(ns)


def parse_time(text: str) -> float:
    """RFC 3339 to unix seconds; 0 for what does not parse (a zero time)."""
    return timefmt.parse_rfc3339_or(text)


class Container:
    """In-memory handle: ``data`` is what is persisted (inspect shape plus private ``_`` keys)."""

    def __init__(self, data: dict, path: str) -> None:
        self.data = data
        self.dir = path
        self.lock = threading.RLock()
        self.exit_seq = 0
        self.removed = False
        self.pending: list[AttachSession] = []
        self.backoff = 0.0
        self.closing = ""  # the start id whose exit is being closed (Monitor.exited)
        self.exit_on_next = False  # stop, kill with SIGKILL or the stop signal, rm -f: no restart policy
        self.prev_stats: dict | None = None

    @property
    def id(self) -> str:
        return self.data["Id"]

    @property
    def name(self) -> str:
        return self.data["Name"].lstrip("/")

    @property
    def state(self) -> dict:
        return self.data["State"]

    @property
    def running(self) -> bool:
        return bool(self.state["Running"])

    def file(self, name: str) -> str:
        return os.path.join(self.dir, name)


class ContainerTable:
    """Every container by id. ``lock`` guards the table and every container's ``data``; ``cond`` is notified on
    each state change (exit, removal) so waiters need no polling. ``closed`` is set once the daemon shuts down."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.by_id: dict[str, Container] = {}
        self.closed = False

    def get(self, ref: str) -> Container:
        ref = (ref or "").lstrip("/")
        with self.lock:
            if ref in self.by_id:
                return self.by_id[ref]
            for c in self.by_id.values():
                if c.name == ref:
                    return c
            if ref:
                found = [c for c in self.by_id.values() if c.id.startswith(ref)]
                if len(found) == 1:
                    return found[0]
                if len(found) > 1:
                    raise InvalidParameter(f"multiple IDs found with provided prefix: {ref}")
        raise NotFound(f"No such container: {ref}")

    def save(self, c: Container) -> None:
        if not c.removed:
            write_json(c.file("config.v2.json"), c.data)

    def emit(self, c: Container, action: str, **extra: str) -> None:
        attrs = {"image": c.data["Config"].get("Image", ""), "name": c.name}
        attrs.update(c.data["Config"].get("Labels") or {})
        attrs.update(extra)
        self.bus.emit("container", action, c.id, attrs)
