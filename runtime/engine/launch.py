"""Starting a process in a container: the report pipe both a container start and an exec read, and the errors it
turns into.

The child writes ``pid:N``, ``ns:`` (namespaces ready) and ``err:TEXT`` lines to the pipe; the pipe is close-on-exec,
so its end of file means the command's exec succeeded.
"""
from __future__ import annotations

import os
import signal as signals
import threading

from machines.runtime.engine.shim import shim_main
from machines.runtime.errors import EngineError, HostError, InvalidParameter


class LaunchReport:
    """The daemon's end of one report pipe: the first ``pid:`` and ``err:`` seen, and whether ``ns:`` came."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "rb")
        self.pid = 0
        self.error: str | None = None
        self.namespaces = False

    def _take(self, line: str) -> None:
        kind, _, text = line.partition(":")
        if kind == "pid" and not self.pid:
            self.pid = int(text)
        elif kind == "ns":
            self.namespaces = True
        elif kind == "err" and self.error is None:
            self.error = text

    def read_until_ready(self) -> None:
        """Reads until the child's pid and its namespaces are known, or it failed."""
        while not (self.pid and self.namespaces) and self.error is None:
            line = self._file.readline()
            if not line:
                self.error = "container init exited before its namespaces were ready"
                return
            self._take(line.decode(errors="replace").rstrip("\n"))

    def read_to_end(self) -> str | None:
        """Reads to end of file (the exec happened, or the child died) and returns the start error, if any."""
        for line in self._file.read().decode(errors="replace").splitlines():
            self._take(line)
        self.close()
        return self.error

    def close(self) -> None:
        self._file.close()


class Launch:
    """Daemon side of one container start: forks the shim and follows the child's report pipe."""

    def __init__(self, spec: dict, netns_fd: int | None, fork_lock: threading.Lock) -> None:
        report_r, report_w = os.pipe()
        go_r, self.go_fd = os.pipe()
        with fork_lock:
            pid = os.fork()
            if pid == 0:
                try:
                    shim_main(spec, report_w, go_r, netns_fd)
                finally:
                    os._exit(0)
            os.close(report_w)
            os.close(go_r)
        self.shim_pid = pid
        self.report = LaunchReport(report_r)
        self.report.read_until_ready()

    @property
    def child(self) -> int:
        return self.report.pid

    @property
    def error(self) -> str | None:
        return self.report.error

    def go(self) -> str | None:
        """Lets the container exec; returns its start error, or None once exec succeeded (the pipe hit EOF)."""
        try:
            os.write(self.go_fd, b"g")
        except BrokenPipeError:
            pass
        os.close(self.go_fd)
        self.go_fd = -1
        return self.report.read_to_end()

    def abort(self) -> None:
        if self.go_fd >= 0:
            os.close(self.go_fd)
            self.go_fd = -1
        if self.child:
            try:
                os.kill(self.child, signals.SIGKILL)
            except ProcessLookupError:
                pass
        self.report.close()


def start_error(message: str) -> EngineError:
    """Moby wording: the docker CLI maps 'not found' texts to 127 and 'permission denied' to 126."""
    return InvalidParameter(message) if ("not found" in message or "no such file" in message
                                         or "permission denied" in message) else HostError(message)


def start_exit_code(message: str) -> int:
    return 126 if "permission denied" in message and "not found" not in message else 127
