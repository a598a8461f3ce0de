"""Docker event messages: a bounded in-memory history plus live delivery to any number of readers."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from machines.runtime.filters import Args

HISTORY = 1024
FILTERS = ("config", "container", "daemon", "event", "image", "label", "network", "node", "plugin", "scope",
           "secret", "service", "type", "volume")  # moby's; those of swarm objects simply never match here


class EventBus:
    def __init__(self) -> None:
        self._events: list[dict] = []
        self._first = 0  # sequence number of self._events[0]
        self._cond = threading.Condition()
        self._closed = False
        self._listeners: list[Callable[[dict], None]] = []

    def listen(self, callback: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``callback`` with each event emitted from now on, inside ``emit`` and under the bus's lock: it must
        only wake someone (write to a pipe), never block. Returns the function that ends it; once that returned,
        ``callback`` is never called again (its pipe may be closed)."""
        with self._cond:
            self._listeners.append(callback)

        def stop() -> None:
            with self._cond:
                self._listeners.remove(callback)

        return stop

    def emit(self, kind: str, action: str, actor_id: str, attributes: dict[str, str]) -> None:
        now = time.time_ns()
        event = {"Type": kind, "Action": action, "Actor": {"ID": actor_id, "Attributes": attributes},
                 "scope": "local", "time": now // 1000000000, "timeNano": now}
        if kind == "container":  # the pre-1.22 fields some clients still read
            event.update({"status": action, "id": actor_id, "from": attributes.get("image", "")})
        with self._cond:
            self._events.append(event)
            if len(self._events) > HISTORY:
                drop = len(self._events) - HISTORY
                del self._events[:drop]
                self._first += drop
            for listener in self._listeners:
                listener(event)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @staticmethod
    def matches(event: dict, filters: Args | None) -> bool:
        if not filters:
            return True
        attrs = event["Actor"]["Attributes"]
        if filters.contains("container") and not (event["Type"] == "container" and (
                filters.fuzzy_match("container", event["Actor"]["ID"])
                or filters.fuzzy_match("container", attrs.get("name", "")))):  # an id prefix or the name, as moby's
            return False
        checks = (
            ("type", [event["Type"]]),
            ("event", [event["Action"], event["Action"].split(":")[0]]),
            ("image", [attrs.get("image", "")]),
            ("volume", [event["Actor"]["ID"]] if event["Type"] == "volume" else []),
            ("network", [event["Actor"]["ID"], attrs.get("name", "")] if event["Type"] == "network" else []),
        )
        for key, values in checks:
            wanted = filters.get(key)
            if wanted and not any(w in values for w in wanted):
                return False
        return filters.match_kv_list("label", attrs)

    def stream(self, since: float | None = None, until: float | None = None,
               filters: Args | None = None) -> Iterator[dict]:
        """Past events from ``since`` (none without it), then live ones until ``until`` (forever when None).
        The starting point is fixed now, not at the first ``next``: nothing emitted after this call is missed."""
        args = Args.of(filters).validate(FILTERS)
        with self._cond:  # without ``since`` only new events, as ``docker events`` does
            start = self._first if since is not None else self._first + len(self._events)
        return self._follow(start, since, until, args)

    def _follow(self, seq: int, since: float | None, until: float | None,
                filters: Args) -> Iterator[dict]:
        while True:
            with self._cond:
                while seq >= self._first + len(self._events) and not self._closed:
                    if until is not None and time.time() >= until:
                        return
                    self._cond.wait(None if until is None else max(0.0, until - time.time()))  # emit and close notify
                if self._closed and seq >= self._first + len(self._events):
                    return
                seq = max(seq, self._first)
                batch = self._events[seq - self._first:]
                seq += len(batch)
            for event in batch:
                stamp = event["timeNano"] / 1e9
                if since is not None and stamp < since:
                    continue
                if until is not None and stamp > until:
                    return
                if self.matches(event, filters):
                    yield event
