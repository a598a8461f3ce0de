"""Log drivers (json-file, local, none: which exist, their options and rotation) and reading moby-style json-file
lines (``{"log","stream","time"}`` per line) with tail, since, until and follow."""
from __future__ import annotations

import json
import os
import select
import time
from collections import deque
from collections.abc import Iterator
from typing import Callable

from machines.runtime import timefmt
from machines.runtime.errors import InvalidParameter
from machines.runtime.linux import inotify

# The log drivers served and the options each accepts (moby's ValidateLogOpt of json-file and local; none
# accepts anything). Both keep JSON lines here; local differs in rotating by default and hiding its file.
_COMMON_OPTIONS = ("max-file", "max-size", "compress", "labels", "labels-regex", "env", "env-regex", "tag")
LOG_DRIVERS: dict[str, tuple[str, ...]] = {"json-file": _COMMON_OPTIONS, "local": _COMMON_OPTIONS, "none": ()}
_LOCAL_DEFAULTS = {"max-size": "20m", "max-file": "5"}  # moby's local driver: 20 MB, five files

STREAMS = {"stdout": 1, "stderr": 2}


def log_size(text: str | None) -> int:
    """go-units RAMInBytes: ``10m`` is 10 MiB; empty means no limit."""
    if not text:
        return 0
    value = str(text).strip().lower().rstrip("b")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(value[-1:], 1)
    try:
        return int(float(value.rstrip("kmg")) * scale)
    except ValueError:
        raise InvalidParameter(f"invalid log size: {text!r}") from None


def log_config(log: dict) -> dict:
    """HostConfig.LogConfig as stored (the daemon's default driver is json-file), refused as moby's
    ValidateLogOpts and the drivers refuse it."""
    kind = log.get("Type") or "json-file"
    opts = {str(k): str(v) for k, v in (log.get("Config") or {}).items()}
    if kind == "none":
        return {"Type": kind, "Config": opts}
    mode = opts.get("mode", "")
    if mode not in ("", "blocking", "non-blocking"):
        raise InvalidParameter(f"logger: logging mode not supported: {mode}")
    if "max-buffer-size" in opts and mode != "non-blocking":
        raise InvalidParameter("logger: max-buffer-size option is only supported with 'mode=non-blocking'")
    if kind not in LOG_DRIVERS:
        raise InvalidParameter(f"logger: no log driver named '{kind}' is registered")
    for key in opts:
        if key not in LOG_DRIVERS[kind] and key not in ("mode", "max-buffer-size"):
            raise InvalidParameter(f"unknown log opt '{key}' for json-file log driver" if kind == "json-file"
                                   else f"unknown log opt '{key}' for log driver {kind}")
    rotation({"Type": kind, "Config": opts})
    return {"Type": kind, "Config": opts}


def rotation(log: dict) -> tuple[int, int]:
    """(max-size in bytes, 0 for none; max-file) with the driver's defaults, refused with moby's words."""
    opts = dict(_LOCAL_DEFAULTS if log["Type"] == "local" else {}, **(log.get("Config") or {}))
    size = log_size(opts.get("max-size"))
    try:
        files = int(opts.get("max-file") or 1)
    except ValueError:
        raise InvalidParameter(f"strconv.Atoi: parsing \"{opts['max-file']}\": invalid syntax") from None
    if files < 1:
        raise InvalidParameter("max-file cannot be less than 1")
    return size, files


def _entries(f, wanted: set) -> Iterator[tuple[int, bytes, str]]:
    for line in f:
        if not line.endswith(b"\n"):
            f.seek(-len(line), os.SEEK_CUR)  # the shim is mid-write: read this line on the next pass
            return
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        stream = STREAMS.get(entry.get("stream"), 1)
        if stream in wanted:
            yield stream, entry.get("log", "").encode("utf-8", "surrogateescape"), entry.get("time", "")


def rotated_files(path: str) -> list:
    """Older rotated files first (``<log>.N`` ... ``<log>.1``), then the current one."""
    older = []
    index = 1
    while os.path.exists(f"{path}.{index}"):
        older.append(f"{path}.{index}")
        index += 1
    return list(reversed(older)) + [path]


class _Wakeup:
    """What a follower sleeps on: the log folder's inotify descriptor and a pipe written when the container stops.
    Where the host gives no inotify descriptor, the follower looks every ``poll`` seconds instead (moby's filenotify
    falls back to polling the same way)."""

    def __init__(self, folder: str, poll: float) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._sleep = select.poll()
        self._sleep.register(self._wake_r, select.POLLIN)
        try:
            self._watch: inotify.FolderWatch | None = inotify.FolderWatch(folder)
            self._sleep.register(self._watch.fd, select.POLLIN)
        except OSError:
            self._watch = None
        self._poll = poll

    def wake(self) -> None:
        """From any thread: the container stopped."""
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # woken already

    def wait(self, until: float) -> None:
        """Until the log folder changes, the container stops, or the wall clock reaches ``until`` (0: never)."""
        timeout = None if self._watch else self._poll
        if until:
            left = max(until - time.time(), 0.0)
            timeout = left if timeout is None else min(timeout, left)
        self._sleep.poll(None if timeout is None else timeout * 1000)
        if self._watch:
            self._watch.clear()
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._watch:
            self._watch.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _no_stop_signal(wake: Callable[[], None]) -> Callable[[], None]:
    return lambda: None


def read_logs(path: str, *, follow: bool, stdout: bool, stderr: bool, since: float = 0, until: float = 0,
              timestamps: bool = False, tail: str = "all", running: Callable[[], bool] = lambda: False,
              on_stop: Callable[[Callable[[], None]], Callable[[], None]] = _no_stop_signal,
              poll: float = 0.05) -> Iterator[tuple[int, bytes]]:
    """Yields (stream, bytes). ``running`` tells a follower when to stop: after the container ends and the file is
    drained. A follower notices rotation (a new file at ``path``) and carries on in the new file.

    A follower sleeps until the shim writes (inotify on the log's folder) or the container stops: ``on_stop(wake)``
    has ``wake`` called when ``running`` may have turned false, and returns the function that ends that."""
    wanted = {s for s, on in ((1, stdout), (2, stderr)) if on}
    limit: int | None = None if str(tail) in ("all", "", "-1") else max(int(tail), 0)

    def keep(stamp: str) -> bool:
        if not (since or until):
            return True
        moment = timefmt.parse_rfc3339(stamp) if stamp else 0.0
        return (not since or moment >= since) and (not until or moment <= until)

    def shape(stream: int, data: bytes, stamp: str) -> tuple[int, bytes]:
        return stream, ((stamp + " ").encode() + data) if timestamps else data

    first: list[tuple[int, bytes, str]] = []
    f = None
    for name in rotated_files(path):
        try:
            current = open(name, "rb")
        except FileNotFoundError:
            continue
        first.extend(e for e in _entries(current, wanted) if keep(e[2]))
        if name == path:
            f = current
        else:
            current.close()
    if limit is not None:
        first = list(deque(first, maxlen=limit)) if limit else []
    for entry in first:
        yield shape(*entry)
    if f is None:
        return
    if not follow or (until and until < time.time()):
        f.close()
        return
    wakeup = _Wakeup(os.path.dirname(path), poll)
    stop_listening = on_stop(wakeup.wake)

    def fresh() -> tuple[list[tuple[int, bytes]], bool]:
        """What was written to ``f`` since the last pass; True once an entry is past ``until``."""
        out: list[tuple[int, bytes]] = []
        for entry in _entries(f, wanted):
            if until and entry[2] and timefmt.parse_rfc3339(entry[2]) > until:
                return out, True
            if keep(entry[2]):
                out.append(shape(*entry))
        return out, False

    try:
        while True:
            alive = running()
            items, past = fresh()
            yield from items
            if past:
                return
            try:
                rotated = os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                items, past = fresh()  # written to the old file after the pass above, before it was rotated
                yield from items
                if past:
                    return
                f.close()
                f = open(path, "rb")
                continue
            if not alive:
                return
            if until and time.time() > until:
                return
            wakeup.wait(until)
    finally:
        stop_listening()
        wakeup.close()
        f.close()
