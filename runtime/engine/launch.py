"""Starting a process in a container: the launcher that forks container monitors, the report pipe both a container
start and an exec read, and the errors it turns into.

The child writes ``pid:N``, ``ns:`` (namespaces ready) and ``err:TEXT`` lines to the pipe; the pipe is close-on-exec,
so its end of file means the command's exec succeeded.
"""
from __future__ import annotations

import json
import os
import signal as signals
import socket
import subprocess
import sys
import threading

from machines.runtime.engine.launcher import BOOT, HEADER, PID, package_root
from machines.runtime.engine.shim import recv_exact
from machines.runtime.errors import EngineError, HostError, InvalidParameter

LAUNCH_TIMEOUT = 60.0  # seconds a launcher may take to fork: one that hangs (stopped, stuck) is killed and replaced


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


class Launcher:
    """The daemon's end: starts the launcher (again if it died or hung) and hands it one start at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen | None = None

    def _spawn(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", BOOT, package_root(), str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        return ours

    def start(self) -> None:
        """Starts the launcher now, so that its imports overlap whatever the daemon does before the first start."""
        with self._lock:
            if self._sock is None:
                self._spawn()

    def run(self, what: str, spec: dict, fds: dict[str, int], target: int = 0) -> int:
        """Has the launcher fork a child that runs ``what`` (``shim``: a container's monitor; ``exec``: an exec
        helper joining the container whose PID 1 is ``target``) with ``spec`` and the descriptors ``fds`` (by name);
        returns the child's pid. A launcher that died is replaced once."""
        data = json.dumps({"run": what, "spec": spec, "target": target, "fds": list(fds)}).encode()
        message = HEADER.pack(len(data)) + data
        with self._lock:
            for attempt in range(2):
                sock = self._sock or self._spawn()
                try:
                    sent = socket.send_fds(sock, [message], list(fds.values()))
                    if sent < len(message):
                        sock.sendall(message[sent:])
                    break
                except (BrokenPipeError, ConnectionResetError):  # it died before this start: replaced once
                    self._close()
                    if attempt:
                        raise
            sock.settimeout(LAUNCH_TIMEOUT)
            try:
                reply = recv_exact(sock, PID.size)
            except OSError:  # a timeout included
                reply = None
            if reply is None:
                self._close(kill=True)
                raise ConnectionResetError("the launcher did not answer")
            sock.settimeout(None)
        pid = PID.unpack(reply)[0]
        if pid < 0:
            raise OSError(-pid, f"cannot fork the container's monitor: {os.strerror(-pid)}")
        return pid

    def _close(self, kill: bool = False) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._process is not None:
            if kill:
                self._process.kill()
            try:
                self._process.wait(10)  # it exits at end of file on its socket
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def close(self) -> None:
        """Stops the launcher; the monitors it forked keep running."""
        with self._lock:
            self._close()


class Launch:
    """Daemon side of one container start: has the launcher fork the shim and follows the child's report pipe."""

    def __init__(self, spec: dict, netns_fd: int | None, launcher: Launcher) -> None:
        report_r, report_w = os.pipe()
        go_r, self.go_fd = os.pipe()
        try:
            try:
                self.shim_pid = launcher.run("shim", spec, {"report": report_w, "go": go_r} | (
                    {} if netns_fd is None else {"netns": netns_fd}))
            finally:
                os.close(report_w)
                os.close(go_r)
        except OSError as e:
            os.close(report_r)
            os.close(self.go_fd)
            raise HostError(f"cannot start the container's monitor: {e}") from None
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
