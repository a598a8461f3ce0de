"""Live attach and exec streams handed to the API layer (``Session.read/write/close_stdin/close``)."""
from __future__ import annotations

import errno
import os
import select
import socket
import threading
from collections import deque
from typing import Callable

from runtime.engine.shim import CLOSE_STDIN, EXIT, STDIN, connect, recv_frame, send_frame

Chunk = tuple[int, bytes]


class Session:
    """A stream of (1 stdout | 2 stderr, bytes) chunks, None at the end; raw stream 1 when ``tty``."""

    tty = False

    def read(self) -> Chunk | None: raise NotImplementedError
    def write(self, data: bytes) -> None: raise NotImplementedError
    def close_stdin(self) -> None: raise NotImplementedError
    def close(self) -> None: raise NotImplementedError


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

    def read(self) -> Chunk | None:
        while self._outputs:
            ready, _, _ = select.select(list(self._outputs), [], [])
            for fd in ready:
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
        self._done.wait()
        return None

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
        with self._lock:
            fds = set(self._outputs)
            if self._stdin is not None:
                fds.add(self._stdin)
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._outputs = {}
            self._stdin = None
