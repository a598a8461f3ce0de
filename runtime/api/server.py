"""HTTP/1.1 server for the Docker Engine API: keep-alive, chunked bodies both ways, 101 hijack, unix and mTLS TCP.

Written on sockets rather than ``http.server`` because Docker clients need things it does not do well: a connection
that turns into a raw duplex stream after ``101 UPGRADED``, headers flushed long before the body (``/wait``), chunked
request bodies (``docker build``, ``docker cp``) and one thread per client that may stream for hours.

Hostile clients are bounded at every step (``_Gate``, ``_TimedReader``): a TLS handshake costs no thread and has a
deadline, served connections are capped overall and per address, request headers have a deadline and bodies an
idle timeout, so unauthenticated sockets can never starve clients with a certificate.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import http
import io
import itertools
import json
import os
import queue
import re
import resource
import select
import selectors
import socket
import ssl
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from typing import Any, Callable
from urllib.parse import parse_qs, unquote

from machines.runtime import API_VERSION, MIN_API_VERSION, VERSION, clientjson
from machines.runtime.errors import EngineError, InvalidParameter

MAX_LINE = 64 * 1024  # one header line or the request line
MAX_HEADERS = 256 * 1024  # all header lines together
MAX_JSON_BODY = 16 * 1024 * 1024  # bodies parsed as JSON are read whole, so they are capped
IDLE_TIMEOUT = 300.0  # seconds a keep-alive connection may sit between requests
HEADER_DEADLINE = 30.0  # seconds from a request's first byte to the end of its headers (slowloris)
BODY_IDLE_TIMEOUT = 120.0  # seconds a request body may stall between two reads
HANDSHAKE_DEADLINE = 5.0  # seconds a TCP client has to finish the TLS handshake
REFUSAL_LINGER = 0.5  # seconds a refused TLS client gets to read the alert before the socket closes (see _close_after_alert)
MAX_PENDING = 512  # TLS handshakes in progress; beyond it the oldest is dropped, so a new client always gets in
PENDING_PER_ADDRESS = 128  # likewise per client address
MAX_CONNECTIONS = 256  # connections being served (one thread each); beyond it a new one gets 503 and is closed
CONNECTIONS_PER_ADDRESS = 128  # likewise per client address (TCP)
IDLE_WORKERS = 8  # connection threads kept waiting for the next client
DRAIN_LIMIT = 1024 * 1024  # unread body bytes we swallow to keep a connection alive; more and we close

_VERSIONED = re.compile(r"^/v([0-9][0-9.]*)(/.*)$")
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,18}")  # ASCII digits only, and short of anything a file system could hold
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")  # a chunk size: int(x, 16) alone would take "0x1_0", "-1", " 1"


class HTTPError(Exception):
    """A protocol-level client mistake: answered with ``status``, then the connection is closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.47"`` -> ``(1, 47)`` for comparisons; empty parts count as 0 like moby's ``versions.compare``."""
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


class Headers:
    """Case-insensitive header map keeping the last value of each name."""

    def __init__(self) -> None:
        self._items: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        self._items[name.lower()] = value

    def get(self, name: str, default: str = "") -> str:
        return self._items.get(name.lower(), default)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items


class Body:
    """The request body as a file-like object; decodes chunked transfer encoding and sends ``100 Continue``."""

    def __init__(self, conn: Connection, length: int | None, chunked: bool, expect_continue: bool) -> None:
        self._conn = conn
        self._remaining = length if length is not None else 0
        self._chunked = chunked
        self._chunk_left = 0
        self._done = not chunked and not self._remaining
        self._expect_continue = expect_continue

    @property
    def done(self) -> bool:
        return self._done

    def _read_line(self) -> bytes:
        line = self._conn.rfile.readline(MAX_LINE + 1)
        if not line.endswith(b"\n"):
            raise HTTPError(400, "malformed chunked request body")
        return line

    def _next_chunk(self) -> None:
        size_text = self._read_line().split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):
            raise HTTPError(400, "malformed chunked request body")
        self._chunk_left = int(size_text, 16)
        if self._chunk_left == 0:
            while self._read_line() not in (b"\r\n", b"\n"):
                pass  # trailers: ignored
            self._done = True

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all when negative), one chunk's worth at most like a socket read; ``b""`` at
        the end of the body."""
        if size < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        with self._stalls():
            want = min(size, self._available())
            data = self._conn.rfile.read(want)
            self._consumed(len(data), want)
            return data

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` as far as the body goes, across chunks, with no intermediate bytes object: ``docker cp``
        uploads arrive in 32 KiB chunks and are written to their files 1 MiB at a time through here."""
        view = memoryview(buffer).cast("B")
        filled = 0
        with self._stalls():
            while filled < len(view):
                want = min(len(view) - filled, self._available())
                if not want:
                    break
                n = self._conn.rfile.readinto(view[filled:filled + want])
                self._consumed(n, want)
                filled += n
        return filled

    @contextlib.contextmanager
    def _stalls(self) -> Iterator[None]:
        """A client that stalls while we wait for its body is a 408."""
        try:
            yield
        except socket.timeout:
            raise HTTPError(408, f"request body stalled for more than {BODY_IDLE_TIMEOUT:.0f} seconds") from None

    def _available(self) -> int:
        """How many bytes may be read now without reading past the body (0 at its end)."""
        if self._expect_continue:
            self._expect_continue = False
            self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while self._chunked and not self._chunk_left and not self._done:
            self._next_chunk()
        return 0 if self._done else (self._chunk_left if self._chunked else self._remaining)

    def _consumed(self, n: int, want: int) -> None:
        if n < want:
            raise HTTPError(400, "unexpected end of request body")
        if not self._chunked:
            self._remaining -= n
            self._done = self._remaining == 0
        elif n:
            self._chunk_left -= n
            if not self._chunk_left and self._read_line().strip():
                raise HTTPError(400, "malformed chunked request body")

    def read_limited(self, limit: int) -> bytes:
        """The whole body, refused with 413 when larger than ``limit``."""
        if not self._chunked and self._remaining > limit:
            raise HTTPError(413, f"request body too large (limit {limit} bytes)")
        parts: list[bytes] = []
        total = 0
        while True:
            data = self.read(65536)
            if not data:
                return b"".join(parts)
            total += len(data)
            if total > limit:
                raise HTTPError(413, f"request body too large (limit {limit} bytes)")
            parts.append(data)

    def drain(self, limit: int) -> bool:
        """Discard the rest of the body; False when more than ``limit`` bytes remain (then the connection closes).

        A client still waiting for ``100 Continue`` never sent its body: the connection closes instead."""
        if self._expect_continue:
            return False
        total = 0
        while not self._done:
            data = self.read(65536)
            total += len(data)
            if total > limit or not data:
                return self._done
        return True


class Request:
    """One parsed request; handlers read path parameters, query and body from it."""

    def __init__(self, conn: Connection, method: str, target: str, headers: Headers) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.headers = headers
        path, _, query_text = target.partition("?")
        self.raw_path = path
        self.query: dict[str, list[str]] = parse_query(query_text) if query_text else {}
        self.api_version = API_VERSION
        self.path = path
        self.body: Body = Body(conn, 0, False, False)

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    def args(self, name: str) -> list[str]:
        return list(self.query.get(name, []))

    def flag(self, name: str, default: bool = False) -> bool:
        """moby's ``httputils.BoolValue``: "", 0, no, false, none mean false; anything else means true."""
        if name not in self.query:
            return default
        return self.arg(name).strip().lower() not in ("", "0", "no", "false", "none")

    def integer(self, name: str, default: int | None = None) -> int | None:
        text = self.arg(name)
        if text == "":
            return default
        if not _INTEGER.fullmatch(text):  # as Go's strconv.Atoi: ASCII digits, no spaces or underscores
            raise InvalidParameter(f"invalid value for {name}: {text!r}")
        return int(text)

    def json(self, required: bool = True) -> Any:
        """The body decoded as JSON; an empty body is ``None`` unless ``required``."""
        data = self.body.read_limited(MAX_JSON_BODY)
        if not data.strip():
            if required:
                raise InvalidParameter("invalid JSON: request body is empty")
            return None
        return clientjson.decode(data, "invalid JSON")

    def json_object(self, required: bool = True) -> dict[str, Any]:
        value = self.json(required)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidParameter(f"invalid JSON: expected an object, got {type(value).__name__}")
        return value

    @property
    def wants_upgrade(self) -> bool:
        return "upgrade" in self.headers.get("Connection").lower()

    def version_at_least(self, version: str) -> bool:
        return version_tuple(self.api_version) >= version_tuple(version)


def parse_query(text: str) -> dict[str, list[str]]:
    return parse_qs(text, keep_blank_values=True)


class Response:
    """A complete response: status, headers and a body written at once."""

    def __init__(self, status: int, body: bytes = b"", content_type: str = "", headers: dict | None = None):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = dict(headers or {})


def json_response(value: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(status, (json.dumps(value) + "\n").encode(), "application/json", headers)


def empty(status: int = 204) -> Response:
    return Response(status)


class Stream:
    """A streamed response: headers flushed at once, then each piece of ``chunks`` sent (chunked) as it comes.

    ``on_error`` turns an ``EngineError`` raised mid-stream into final bytes (JSON streams report ``errorDetail``).
    """

    def __init__(self, chunks: Iterable[bytes], content_type: str, status: int = 200,
                 headers: dict | None = None, on_error: Callable[[EngineError], bytes] | None = None,
                 long_poll: bool = False):
        self.chunks = chunks
        self.content_type = content_type
        self.status = status
        self.headers = dict(headers or {})
        self.on_error = on_error
        self.long_poll = long_poll  # may wait long for data: watch for the client hanging up meanwhile


def json_lines(items: Iterable[Any]) -> Iterator[bytes]:
    for item in items:
        yield (json.dumps(item) + "\r\n").encode()


def json_stream(items: Iterable[Any], status: int = 200, prime: int = 0) -> Stream:
    """Docker's JSON message stream; an error after the start goes in-band as ``errorDetail``.

    The first ``prime`` messages are taken before any header is sent, so an error that comes early (no such
    image, bad credentials) is a plain HTTP error response, as moby answers when nothing was flushed yet.
    """
    iterator = iter(items)
    head = list(itertools.islice(iterator, prime))

    def error(exc: EngineError) -> bytes:
        return (json.dumps({"errorDetail": {"message": str(exc)}, "error": str(exc)}) + "\r\n").encode()

    return Stream(json_lines(itertools.chain(head, iterator)), "application/json", status, on_error=error)


HIJACKED = object()  # a handler's return value once it took the connection over


_SERVER_HEADERS = (("Api-Version", API_VERSION), ("Docker-Experimental", "false"), ("Ostype", "linux"),
                   ("Server", f"Docker/{VERSION} (linux)"))
_date: tuple[int, str] = (0, "")  # the Date header of the current second, formatted once per second
_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


def base_headers() -> list[tuple[str, str]]:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)))
    return [*_SERVER_HEADERS, ("Date", _date[1])]


Handler = Callable[..., Any]


class _TimedReader(io.RawIOBase):
    """The socket as a raw stream whose reads obey the phase of the request being read.

    ``deadline`` bounds a whole phase (the request headers: a client trickling one byte at a time cannot hold the
    connection longer); ``idle`` bounds each wait for more bytes (a stalled body). Both None: wait forever (a
    hijacked stream, where a silent stdin is normal). Only reads are bounded: the socket is blocking otherwise.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN | select.POLLPRI)
        self._tls_pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted, unseen by poll
        self.deadline: float | None = None
        self.idle: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        timeout = self.idle
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("request headers not received in time")
            timeout = remaining if timeout is None else min(timeout, remaining)
        # The wait is bounded with poll, not a socket timeout: writes stay unbounded (a slow reader of a long
        # stream is no attacker), and a request costs no switches of the socket's blocking mode.
        if timeout is not None and not (self._tls_pending and self._tls_pending()) and \
                not self._poll.poll(timeout * 1000):
            raise socket.timeout("timed out")
        return self._sock.recv_into(buffer)


class Connection:
    """One client connection: reads requests in a loop until close, dispatching each through ``router``."""

    def __init__(self, sock: socket.socket, app: App) -> None:
        self.sock = sock
        self.app = app
        self.reader = _TimedReader(sock)
        self.rfile = io.BufferedReader(self.reader, 65536)
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self.sock.sendall(data)

    def phase(self, deadline: float | None = None, idle: float | None = None) -> None:
        """How long the next reads may wait: see ``_TimedReader``."""
        self.reader.deadline = None if deadline is None else time.monotonic() + deadline
        self.reader.idle = idle

    def _read_head(self) -> tuple[str, str, str, Headers] | None:
        self.phase(idle=IDLE_TIMEOUT)
        try:
            if not self.rfile.peek(1):
                return None
        except socket.timeout:
            return None  # an idle keep-alive connection: close quietly
        self.phase(deadline=HEADER_DEADLINE)
        try:
            line = self.rfile.readline(MAX_LINE + 1)
            while line in (b"\r\n", b"\n"):  # tolerate stray CRLF between requests (RFC 9112 2.2)
                line = self.rfile.readline(MAX_LINE + 1)
            if not line:
                return None
            if len(line) > MAX_LINE:
                raise HTTPError(414, "request line too long")
            parts = line.decode("latin-1").rstrip("\r\n").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                raise HTTPError(400, "malformed request line")
            headers = Headers()
            total = len(line)
            while True:
                line = self.rfile.readline(MAX_LINE + 1)
                total += len(line)
                if total > MAX_HEADERS or len(line) > MAX_LINE:
                    raise HTTPError(431, "request header fields too large")
                if not line:
                    return None
                if line in (b"\r\n", b"\n"):
                    break
                name, sep, value = line.decode("latin-1").partition(":")
                if not sep or not name.strip() or name != name.strip():
                    raise HTTPError(400, "malformed header line")
                headers.add(name, value.strip())
            return parts[0], parts[1], parts[2], headers
        except socket.timeout:
            raise HTTPError(408, f"request headers not received within {HEADER_DEADLINE:.0f} seconds") from None
        finally:
            self.phase(idle=BODY_IDLE_TIMEOUT)

    def serve(self) -> None:
        try:
            while True:
                try:
                    head = self._read_head()
                except HTTPError as exc:
                    self.refuse(exc)
                    return
                if head is None:
                    return
                method, target, proto, headers = head
                if not self.handle(method, target, proto, headers):
                    return
        except (OSError, ValueError, ssl.SSLError):
            return  # the client went away or broke the protocol; nothing to answer
        finally:
            self.close()

    def refuse(self, error: HTTPError) -> None:
        """Answer a protocol error and close gracefully: unread input would make the kernel reset the connection
        and the client could lose our answer, so read (and drop) what it still sends, for a moment."""
        self.send_response(error_response(error.status, str(error)), close=True)
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(1.0)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and self.sock.recv(65536):
                pass
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        try:
            self.rfile.close()
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    def handle(self, method: str, target: str, proto: str, headers: Headers) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        request = Request(self, method, target, headers)
        close = proto == "HTTP/1.0" or "close" in headers.get("Connection").lower()
        try:
            request.body = _make_body(self, headers)
            outcome = self.app.dispatch(request)
        except HTTPError as exc:
            self.refuse(exc)
            return False
        if outcome is HIJACKED:
            return False
        if not request.body.done and not self._drained(request.body):
            close = True
        if isinstance(outcome, Stream):
            return self.send_stream(outcome, request, close) and not close
        self.send_response(outcome, close=close, head_only=method == "HEAD")
        return not close

    @staticmethod
    def _drained(body: Body) -> bool:
        """Swallow what the handler left of the body; a broken rest (bad chunk, stall) only closes the connection
        after the answer, it never loses the answer."""
        try:
            return body.drain(DRAIN_LIMIT)
        except HTTPError:
            return False

    def head_bytes(self, status: int, headers: list[tuple[str, str]], reason: str | None = None) -> bytes:
        if reason is None:
            reason = _REASONS.get(status, "Status")
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines.extend("{}: {}".format(*pair) for pair in headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send_response(self, response: Response, close: bool = False, head_only: bool = False) -> None:
        headers = base_headers()
        headers.extend(response.headers.items())
        body = response.body
        if response.status in (204, 304):
            body = b""
        else:
            if response.content_type:
                headers.append(("Content-Type", response.content_type))
            headers.append(("Content-Length", str(len(body))))
        if close:
            headers.append(("Connection", "close"))
        self.write(self.head_bytes(response.status, headers) + (b"" if head_only else body))

    def send_stream(self, stream: Stream, request: Request, close: bool) -> bool:
        """Send a chunked response; False when it ended early and the connection cannot be reused."""
        headers = base_headers()
        headers.extend(stream.headers.items())
        headers.append(("Content-Type", stream.content_type))
        headers.append(("Transfer-Encoding", "chunked"))
        if close:
            headers.append(("Connection", "close"))
        self.write(self.head_bytes(stream.status, headers))
        chunks = stream.chunks
        if stream.long_poll and not isinstance(self.sock, ssl.SSLSocket):  # TLS has no MSG_PEEK: seen on write
            chunks = _PeerWatch(self.sock, chunks)
        try:
            for chunk in chunks:
                if chunk:
                    self.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except EngineError as exc:
            if stream.on_error is None:
                self.app.log(f"stream {request.method} {request.path} ended: {exc}")
                return False
            chunk = stream.on_error(exc)
            self.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (OSError, ssl.SSLError):
            return False
        except HTTPError as exc:  # the request body stalled or broke while the answer streamed: end it there
            self.app.log(f"stream {request.method} {request.path} ended: {exc}")
            return False
        except Exception:  # a bug mid-stream: cut the stream, keep the daemon
            self.app.log(f"stream {request.method} {request.path} failed:\n{traceback.format_exc()}")
            return False
        finally:
            closer = getattr(chunks, "close", None)
            if closer is not None:
                closer()
        self.write(b"0\r\n\r\n")
        return True

    def hijack(self, request: Request, content_type: str) -> Hijacked:
        """Turn the connection into a raw duplex stream: ``101 UPGRADED`` (or 200 without an Upgrade request).

        The headers go out so that the client's first read cannot carry any payload with them: docker-py reads the
        headers through ``http.client``'s buffer and the payload from the raw socket underneath, so bytes read with
        the headers would be lost. Nothing waits for the client to read them (see ``_send_alone``).
        """
        self.phase()  # a hijacked stdin may stay silent for hours
        headers = base_headers()
        headers.append(("Content-Type", content_type))
        if request.wants_upgrade:
            headers.extend([("Connection", "Upgrade"), ("Upgrade", "tcp")])
            self._send_alone(self.head_bytes(101, headers, "UPGRADED"))
        else:
            self._send_alone(self.head_bytes(200, headers))
        return Hijacked(self)

    def _send_alone(self, data: bytes) -> None:
        """Send ``data`` so that no read of the client returns it together with what we send next.

        Over TLS a read returns at most one record, and ``data`` is one. On a unix socket it carries a descriptor
        (SCM_RIGHTS, of /dev/null): the kernel ends a read after a message that carried descriptors, and drops the
        descriptor for a reader that did not ask for it (``recv``, ``read``). A client that refuses descriptors
        (``SO_PASSRIGHTS`` off) gets the data plainly."""
        if self.sock.family != socket.AF_UNIX:
            self.write(data)
            return
        rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", _devnull()))
        try:
            with self._lock:
                sent = self.sock.sendmsg([data], [rights])
                self.sock.sendall(data[sent:])
        except PermissionError:
            self.write(data)


@functools.cache
def _devnull() -> int:
    """The descriptor ``Connection._send_alone`` attaches: one, opened once, so a hijack needs no new descriptor."""
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


class _PeerWatch:
    """Iterates ``chunks`` in a helper thread while the connection thread watches the socket, so a client hanging
    up during a long wait (``/wait`` on a service, a quiet ``logs -f``, ``/events``) frees its connection at once,
    as moby's request context does. The helper ends at the producer's next item.

    Nothing here polls: the connection thread sleeps in ``poll`` on the client socket and on a pipe the helper
    writes a byte to with each item, so an item (the ``/wait`` answer of a ``docker run``) goes out as soon as it
    is made and a hang-up is seen when it happens."""

    BACKLOG = 8  # items made ahead of a slow client before the helper waits

    def __init__(self, sock: socket.socket, chunks: Iterable[bytes]) -> None:
        self._sock = sock
        self._items: collections.deque[tuple[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._cancelled = False
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        threading.Thread(target=self._produce, args=(chunks,), name="api-stream", daemon=True).start()

    def _offer(self, kind: str, value: Any) -> bool:
        with self._cond:
            while len(self._items) >= self.BACKLOG and not self._cancelled:
                self._cond.wait()
            if self._cancelled:
                return False
            self._items.append((kind, value))
            try:
                os.write(self._wake_w, b"x")  # under the lock: ``close`` cannot have closed the pipe meanwhile
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already
        return True

    def _produce(self, chunks: Iterable[bytes]) -> None:
        iterator = iter(chunks)
        try:
            for item in iterator:
                if not self._offer("item", item):
                    return
            self._offer("end", None)
        except Exception as exc:  # handed to the connection thread, which answers it like an unwatched stream
            self._offer("error", exc)
        finally:
            closer = getattr(iterator, "close", None)
            if closer is not None:
                closer()

    def _take(self) -> tuple[str, Any] | None:
        with self._cond:
            if not self._items:
                return None
            self._cond.notify()
            return self._items.popleft()

    def _peer_gone(self) -> bool:
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def __iter__(self) -> Iterator[bytes]:
        watch = select.poll()  # not select(): descriptors above 1024 are normal on a busy daemon
        watch.register(self._wake_r, select.POLLIN)
        watch.register(self._sock, select.POLLIN)
        while True:
            taken = self._take()
            if taken is None:
                for fd, _ in watch.poll():
                    if fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                    elif self._peer_gone():
                        raise ConnectionAbortedError("client hung up")
                    else:  # the client sent more (a pipelined request): only its hang-up mattered here
                        watch.unregister(self._sock)
                continue
            kind, value = taken
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        with self._cond:
            if self._cancelled:
                return
            self._cancelled = True
            self._cond.notify_all()
            os.close(self._wake_r)
            os.close(self._wake_w)


class Hijacked:
    """The duplex stream after a hijack: stdin from the client, output to it; closed when the process ends."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def read(self, size: int = 65536) -> bytes:
        """Client input; ``b""`` once the client half-closed or hung up."""
        try:
            return self.conn.rfile.read1(size)  # type: ignore[attr-defined]  # a BufferedReader
        except (OSError, ValueError, ssl.SSLError):
            return b""

    def write(self, data: bytes) -> None:
        self.conn.write(data)

    def finish(self) -> None:
        """Signal end of output: shut our write side down so the client sees EOF."""
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _make_body(conn: Connection, headers: Headers) -> Body:
    expect = headers.get("Expect").lower() == "100-continue"
    if "chunked" in headers.get("Transfer-Encoding").lower():
        return Body(conn, None, True, expect)
    text = headers.get("Content-Length")
    if not text:
        return Body(conn, 0, False, False)
    if not _DECIMAL.fullmatch(text):  # not str.isdigit(): int() would take "١٢" (Arabic-Indic digits)
        raise HTTPError(400, "invalid Content-Length")
    return Body(conn, int(text), False, expect)


def _error_body(message: str) -> bytes:
    return (json.dumps({"message": message}) + "\n").encode()


def error_response(status: int, message: str) -> Response:
    return Response(status, _error_body(message), "application/json")


class Route:
    """One entry of the table. Its regular expression is compiled on the first request whose path starts with the
    pattern's literal beginning (patterns have no regex characters outside ``{...}``): compiling the whole table
    was 5 to 8 % of the daemon's start, and most routes are never asked for."""

    def __init__(self, method: str, pattern: str, handler: Handler, summary: str) -> None:
        self.method = method
        self.pattern = pattern
        self.handler = handler
        self.summary = summary
        self.prefix = pattern.partition("{")[0]
        self._regex: re.Pattern[str] | None = None

    @property
    def regex(self) -> re.Pattern[str]:
        if self._regex is None:  # two threads at once both compile the same expression; either result serves
            regex = re.sub(r"\{(\w+):\.\*\}", r"(?P<\1>.+)", self.pattern)
            regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
            self._regex = re.compile("^" + regex + "$")
        return self._regex


class Router:
    """Routes in registration order (specific paths before ``{name:.*}`` ones, as moby registers them).

    A path without parameters is found in a dict (unless a route registered before it matches it too); the others
    are tried in order among the routes of the request's method: the fixed cost of every request."""

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self._fixed: dict[tuple[str, str], Route] = {}
        self._patterns: dict[str, list[Route]] = collections.defaultdict(list)

    def add(self, method: str, pattern: str, summary: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            route = Route(method, pattern, handler, summary)
            self.routes.append(route)
            if "{" in pattern:
                self._patterns[method].append(route)
            elif not self._first(method, pattern) and (method, pattern) not in self._fixed:
                self._fixed[(method, pattern)] = route
            return handler

        return register

    def _first(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self._patterns.get(method, ()):
            if not path.startswith(route.prefix):
                continue
            found = route.regex.match(path)
            if found:
                return route, {key: unquote(value) for key, value in found.groupdict().items()}
        return None

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        route = self._fixed.get((method, path))
        if route is not None:
            return route, {}
        return self._first(method, path)


class App:
    """Ties the router to a backend context and turns errors into Docker-style responses."""

    def __init__(self, router: Router, context: Any, debug: bool = False) -> None:
        self.router = router
        self.context = context
        self.debug = debug

    def log(self, message: str) -> None:
        sys.stderr.write(f"runtime-api: {message}\n")
        sys.stderr.flush()

    def dispatch(self, request: Request) -> Any:
        started = time.monotonic()
        outcome = self._dispatch(request)
        if self.debug:
            status = getattr(outcome, "status", 101)
            self.log(f"{request.method} {request.target} -> {status} ({(time.monotonic() - started) * 1000:.1f} ms)")
        return outcome

    def _dispatch(self, request: Request) -> Any:
        path = request.raw_path
        found = _VERSIONED.match(path)
        if found:
            version, path = found.group(1), found.group(2)
            if version_tuple(version) > version_tuple(API_VERSION):
                return error_response(400, f"client version {version} is too new. Maximum supported API version is {API_VERSION}")
            if version_tuple(version) < version_tuple(MIN_API_VERSION):
                return error_response(400, f"client version {version} is too old. Minimum supported API version is {MIN_API_VERSION}, "
                                           "please upgrade your client to a newer version")
            request.api_version = version
        request.path = path
        matched = self.router.match(request.method, path)
        if matched is None:
            return error_response(404, "page not found")
        route, params = matched
        try:
            outcome = route.handler(self.context, request, **params)
        except HTTPError:
            raise
        except EngineError as exc:
            if exc.status == 304:
                return empty(304)
            return error_response(exc.status, str(exc))
        except Exception:
            self.log(f"{request.method} {request.target} failed:\n{traceback.format_exc()}")
            return error_response(500, f"internal error: {sys.exc_info()[1]}")
        if outcome is None:
            return empty(204)
        return outcome


class _Pending:
    """An accepted TCP connection still in its TLS handshake: it costs a file descriptor, never a thread."""

    __slots__ = ("sock", "address", "deadline")

    def __init__(self, sock: ssl.SSLSocket, address: str, deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.deadline = deadline


def _peer_key(sock: socket.socket, address: Any) -> str:
    """What per-address caps count by: the client's IP for TCP, one key for every unix socket client."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        return str(address[0])
    return "unix"


def _tune_tcp(sock: socket.socket) -> None:
    """TCP_NODELAY for small API messages; keepalive so a vanished client's connection is reaped (~2 min)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class _Gate:
    """Accepts on every listener in one thread and admits connections to their own serving thread.

    TLS handshakes run here, non-blocking, with a deadline: idle or slow unauthenticated sockets cost a file
    descriptor and never a thread. Their number is capped (overall and per address) by dropping the *oldest*
    pending one, so a flood cannot keep a new client from starting its handshake. Connections being served are
    capped too (overall and per address); over the cap a client is answered 503 and closed.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self._selector = selectors.DefaultSelector()
        self._pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        self._pending_by_address: dict[str, int] = collections.Counter()
        self._active: dict[str, int] = collections.Counter()
        self._active_total = 0
        self._active_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._stopping = False
        self._jobs: queue.SimpleQueue[tuple[socket.socket | None, str]] = queue.SimpleQueue()
        self._idle_workers = 0  # threads blocked on ``_jobs``
        self._listeners: list[socket.socket] = []

    def add_listener(self, sock: socket.socket, tls: ssl.SSLContext | RevocableTLS | None) -> None:
        sock.setblocking(False)
        self._listeners.append(sock)
        self._selector.register(sock, selectors.EVENT_READ, ("listen", tls))

    def run(self) -> None:
        while not self._stopping:
            timeout = None
            if self._pending:
                timeout = max(0.0, next(iter(self._pending.values())).deadline - time.monotonic())
            for key, _events in self._selector.select(timeout):
                kind, data = key.data
                try:
                    if kind == "listen":
                        self._accept(key.fileobj, data)  # type: ignore[arg-type]
                    elif kind == "handshake":
                        self._handshake(data)
                    elif kind == "closing":
                        self._discard_input(data)
                except Exception:  # a bug here must not stop the daemon from accepting
                    self.app.log(f"accepting connections failed:\n{traceback.format_exc()}")
            self._expire()
        for pending in list(self._pending.values()):
            self._drop(pending)
        with self._active_lock:
            for _ in range(self._idle_workers):
                self._jobs.put((None, ""))  # idle workers end
            self._idle_workers = 0
        self._selector.close()

    def stop(self) -> None:
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _accept(self, listener: socket.socket, tls: ssl.SSLContext | RevocableTLS | None) -> None:
        for _ in range(64):  # a burst at a time, then the other listeners and handshakes get their turn
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: leave the backlog for later
                self.app.log(f"accept failed: {exc}")
                time.sleep(0.05)
                return
            peer = _peer_key(sock, address)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                _tune_tcp(sock)
            if tls is None:
                sock.setblocking(True)
                self._admit(sock, peer)
                continue
            try:
                sock.setblocking(False)
                wrapped = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ssl.SSLError):
                sock.close()
                continue
            self._make_room(peer)
            pending = _Pending(wrapped, peer, time.monotonic() + HANDSHAKE_DEADLINE)
            self._pending[wrapped.fileno()] = pending
            self._pending_by_address[peer] += 1
            self._selector.register(wrapped, selectors.EVENT_READ, ("handshake", pending))

    def _make_room(self, peer: str) -> None:
        """Drop the oldest pending handshake of ``peer`` (or of anyone) when a cap would be exceeded."""
        if self._pending_by_address[peer] >= PENDING_PER_ADDRESS:
            self._drop(next(p for p in self._pending.values() if p.address == peer))
        if len(self._pending) >= MAX_PENDING:
            self._drop(next(iter(self._pending.values())))

    def _drop(self, pending: _Pending) -> None:
        self._forget(pending)
        try:
            pending.sock.close()
        except OSError:
            pass

    def _forget(self, pending: _Pending) -> None:
        self._pending.pop(pending.sock.fileno(), None)
        self._pending_by_address[pending.address] -= 1
        if not self._pending_by_address[pending.address]:
            del self._pending_by_address[pending.address]
        self._selector.unregister(pending.sock)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                return
            self._drop(oldest)  # silently: logging each one would let a flood fill the log

    def _handshake(self, pending: _Pending) -> None:
        try:
            pending.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(pending.sock, selectors.EVENT_READ, ("handshake", pending))
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(pending.sock, selectors.EVENT_WRITE, ("handshake", pending))
            return
        except (OSError, ssl.SSLError, ValueError) as exc:
            if isinstance(exc, (ssl.SSLEOFError, ConnectionError)):
                self._drop(pending)
            else:
                self.app.log(f"TLS handshake with {pending.address} refused: {exc}")
                self._close_after_alert(pending)
            return
        self._forget(pending)
        pending.sock.setblocking(True)
        self._admit(pending.sock, pending.address)

    def _close_after_alert(self, pending: _Pending) -> None:
        """Half-close, then read until the client closes too (``REFUSAL_LINGER`` at most, and never past this
        connection's handshake deadline) before closing. A TLS 1.3 client sends its first request with its
        certificate; closing with that request unread makes the kernel answer RST, which can reach the client before
        the alert saying why ("tls: revoked certificate"). The same reason as Go's ``closeWriteAndWait``."""
        try:
            pending.sock.shutdown(socket.SHUT_WR)  # the alert is out; the TLS layer is done with this socket
        except OSError:
            self._drop(pending)
            return
        pending.deadline = min(pending.deadline, time.monotonic() + REFUSAL_LINGER)
        self._selector.modify(pending.sock, selectors.EVENT_READ, ("closing", pending))

    def _discard_input(self, pending: _Pending) -> None:
        try:
            if pending.sock.recv(65536):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._drop(pending)

    def _admit(self, sock: socket.socket, peer: str) -> None:
        """Serve ``sock`` in a thread of its own, or answer 503 when the connection caps are reached."""
        with self._active_lock:
            per_address_full = peer != "unix" and self._active[peer] >= CONNECTIONS_PER_ADDRESS
            if self._active_total >= MAX_CONNECTIONS or per_address_full:
                refused = True
            else:
                refused = False
                self._active_total += 1
                self._active[peer] += 1
        if refused:
            self._refuse_busy(sock)
            return
        with self._active_lock:
            if self._idle_workers:
                self._idle_workers -= 1
                self._jobs.put((sock, peer))
                return
        thread = threading.Thread(target=self._work, args=(sock, peer), name="api-conn", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no more threads from the system: same answer as a full cap
            self._release(peer)
            self._refuse_busy(sock)

    def _work(self, sock: socket.socket | None, peer: str) -> None:
        """Serve connections, this one and then, while fewer than ``IDLE_WORKERS`` wait, the ones handed over:
        a waiting thread takes a new client with one wake-up, where starting a thread makes the gate wait until
        it runs (about a millisecond of every ``docker`` command on a busy machine)."""
        while sock is not None:
            self._serve(sock, peer)
            with self._active_lock:
                if self._stopping or self._idle_workers >= IDLE_WORKERS:
                    return
                self._idle_workers += 1
            sock, peer = self._jobs.get()

    def _refuse_busy(self, sock: socket.socket) -> None:
        body = _error_body("too many connections to the daemon; try again later")
        head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        try:
            sock.settimeout(0.5)
            sock.sendall(head.encode("latin-1") + body)
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    def _serve(self, sock: socket.socket, peer: str) -> None:
        try:
            Connection(sock, self.app).serve()
        except Exception:
            self.app.log(f"connection from {peer} failed:\n{traceback.format_exc()}")
        finally:
            self._release(peer)

    def _release(self, peer: str) -> None:
        with self._active_lock:
            self._active_total -= 1
            self._active[peer] -= 1
            if not self._active[peer]:
                del self._active[peer]

    def close(self) -> None:
        for sock in self._listeners:
            sock.close()
        self._wake_r.close()
        self._wake_w.close()


def tls_context(ca: str, cert: str, key: str, verify: bool = True, crl: str | None = None) -> ssl.SSLContext:
    """Server context for mutual TLS: the client must present a certificate signed by ``ca`` (and, with ``crl``,
    one that revocation list does not name)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if verify:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
        if crl is not None:
            context.load_verify_locations(crl)
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


class RevocableTLS:
    """The server's TLS context, made again when the revocation list file changes: ``machines revoke`` uploads a
    new one (through provision) and the next connection is checked against it, without a restart. An unreadable
    new list keeps the last good context (the daemon logs it)."""

    def __init__(self, ca: str, cert: str, key: str, crl: str) -> None:
        self._files = (ca, cert, key)
        self._crl = crl
        self._stamp = self._crl_stamp()
        self._context = tls_context(ca, cert, key, crl=crl)

    def _crl_stamp(self) -> tuple[int, int, int]:
        info = os.stat(self._crl)
        return info.st_mtime_ns, info.st_size, info.st_ino

    def current(self) -> ssl.SSLContext:
        try:
            stamp = self._crl_stamp()
            if stamp != self._stamp:
                self._context = tls_context(*self._files, crl=self._crl)
                self._stamp = stamp
        except (OSError, ValueError, ssl.SSLError) as exc:
            sys.stderr.write(f"keeping the previous revocation list: {exc}\n")
        return self._context

    def wrap_socket(self, sock: socket.socket, **options: Any) -> ssl.SSLSocket:
        return self.current().wrap_socket(sock, **options)


def bind_unix(path: str) -> socket.socket:
    """Listen on a unix socket at ``path`` (a stale socket file is replaced), mode 0660 like dockerd's."""
    if os.path.exists(path) or os.path.islink(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise OSError(f"{path}: another daemon is listening there")
        finally:
            probe.close()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def raise_open_file_limit() -> None:
    """Lift the soft descriptor limit to the hard one, as Go (and so dockerd) does at start: every pending TLS
    handshake holds a descriptor, and the default 1024 would be the real cap under a flood."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


class Server:
    """All listeners of one daemon, served by one ``_Gate`` thread until ``shutdown``."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._gate = _Gate(app)
        self._thread: threading.Thread | None = None
        self.unix_paths: list[str] = []

    def add(self, sock: socket.socket, tls: ssl.SSLContext | RevocableTLS | None = None) -> None:
        if sock.family == socket.AF_UNIX:
            self.unix_paths.append(sock.getsockname())
        self._gate.add_listener(sock, tls)

    def start(self) -> None:
        raise_open_file_limit()
        self._thread = threading.Thread(target=self._gate.run, name="api-gate", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._gate.stop()
        if self._thread is not None:
            self._thread.join(5)
        self._gate.close()
        for path in self.unix_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
