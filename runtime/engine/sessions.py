"""Live attach and exec streams handed to the API layer (``Session.read/write/close_stdin/close``)."""
from __future__ import annotations

import errno
import os
import select
import socket
import threading
from collections import deque
from collections.abc import Iterable
from typing import Callable

from machines.runtime.engine.shim import CLOSE_STDIN, EXIT, STDIN, connect, recv_frame, send_frame

Chunk = tuple[int, bytes]


class Session:
    """A stream of (1 stdout | 2 stderr, bytes) chunks, None at the end; raw stream 1 when ``tty``."""

    tty = False

    def read(self) -> Chunk | None: raise NotImplementedError
    def write(self, data: bytes) -> None: raise NotImplementedError
    def close_stdin(self) -> None: raise NotImplementedError
    def close(self) -> None: raise NotImplementedError

    def detach(self) -> None:
        """The client leaves (detach keys, or the end of its input on a TTY): the output stream ends, the process
        keeps running with its stdin open."""
        self.close()


class AttachSession(Session):
    """Attach to a container's shim. Made before start (``docker run`` attaches first), it connects when the
    engine starts the container, before the process execs, so no output is missed."""

    def __init__(self, tty: bool, opts: dict, backlog: list[Chunk], stream: bool,
                 on_close: Callable[[AttachSession], None]) -> None:
        self.tty = tty
        self._opts = opts
        self._backlog: deque[Chunk] = deque(backlog)
        self._stream = stream
        self._on_close = on_close
        self._sock: socket.socket | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._pending: list[tuple[int, bytes]] = []
        self._closed = False

    def connect(self, socket_path: str) -> None:
        """Called by the engine (start) or at once for a running container."""
        with self._lock:
            if self._closed or self._sock is not None:
                return
            try:
                self._sock = connect(socket_path, {"attach": self._opts}, timeout=5)
                for kind, data in self._pending:
                    send_frame(self._sock, kind, data)
            except OSError:
                self._sock = None
            self._pending = []
        self._ready.set()

    def abandon(self) -> None:
        """The container went away without starting: end the stream."""
        self._ready.set()

    def read(self) -> Chunk | None:
        if self._backlog:
            return self._backlog.popleft()
        if not self._stream:
            return None
        self._ready.wait()
        sock = self._sock
        if sock is None:
            return None
        try:
            frame = recv_frame(sock)
        except OSError:
            return None
        if frame is None or frame[0] == EXIT:
            return None
        return frame

    def _send(self, kind: int, data: bytes) -> None:
        with self._lock:
            if self._sock is None:
                if not self._closed:
                    self._pending.append((kind, data))
                return
            try:
                send_frame(self._sock, kind, data)
            except OSError:
                pass

    def write(self, data: bytes) -> None:
        self._send(STDIN, data)

    def close_stdin(self) -> None:
        self._send(CLOSE_STDIN, b"")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._sock.close()
        self._ready.set()
        self._on_close(self)


class ExecSession(Session):
    """The daemon holds an exec's pipes (or pty master) directly; ``done`` is set once its exit code is known."""

    def __init__(self, outputs: dict[int, int], stdin_fd: int | None, tty: bool, done: threading.Event) -> None:
        self.tty = tty
        self._outputs = dict(outputs)
        self._stdin = stdin_fd
        self._done = done
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._detached = self._closed = False

    def read(self) -> Chunk | None:
        while self._outputs and not self._detached:
            for fd in _readable(list(self._outputs) + [self._wake_r]):
                if fd == self._wake_r:
                    return None
                try:
                    data = os.read(fd, 65536)
                except OSError as e:
                    if e.errno not in (errno.EIO, errno.EBADF):
                        raise
                    data = b""
                kind = self._outputs[fd]
                if data:
                    return kind, data
                del self._outputs[fd]
                if fd != self._stdin:
                    os.close(fd)
        if not self._detached:
            self._done.wait()
        return None

    def detach(self) -> None:
        """Ends the client's stream at once (``read`` returns None); ``close`` then leaves the process running."""
        with self._lock:
            if self._detached or self._closed:
                return
            self._detached = True
            os.write(self._wake_w, b"x")

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._stdin is not None:
                try:
                    os.write(self._stdin, data)
                except OSError:
                    pass

    def close_stdin(self) -> None:
        with self._lock:
            if self._stdin is None:
                return
            if self.tty:
                self.write_eot()
                return
            os.close(self._stdin)
            self._stdin = None

    def write_eot(self) -> None:
        try:
            os.write(self._stdin, b"\x04")  # type: ignore[arg-type]
        except OSError:
            pass

    def close(self) -> None:
        """The client is gone. A process still running keeps its terminal (and its stdin pipe is closed, as dockerd
        closes it): its output is drained and dropped until it ends, so it neither blocks on a full pipe nor dies of
        a hang-up."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            outputs = set(self._outputs)
            stdin = self._stdin if self._stdin not in outputs else None
            self._outputs = {}
            self._stdin = None
            _close_all([self._wake_r, self._wake_w] + ([stdin] if stdin is not None else []))
        if self._done.is_set() or not outputs:
            _close_all(outputs)
        else:
            threading.Thread(target=_drain, args=(outputs,), name="exec-drain", daemon=True).start()


def _readable(fds: Iterable[int]) -> list[int]:
    """Those of ``fds`` with data or at their end, once one is: ``poll``, as ``select`` refuses descriptors above
    1023, which a daemon serving many clients hands out."""
    watch = select.poll()
    for fd in fds:
        watch.register(fd, select.POLLIN)
    return [fd for fd, _ in watch.poll()]


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _drain(fds: set[int]) -> None:
    """Reads a detached exec's output away until every output ends (the process and its children are gone)."""
    readable = set(fds)
    try:
        while readable:
            for fd in _readable(readable):
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: a terminal whose last user is gone
                    data = b""
                if not data:
                    readable.discard(fd)
    finally:
        _close_all(fds)
