"""The embedded DNS server of user-defined networks, as dockerd runs it at 127.0.0.11 in each container.

For every container on a user-defined network the daemon holds a UDP and a TCP socket bound to 127.0.0.11:53
*inside the container's network namespace* (a socket keeps the namespace of the thread that made it), so nothing is
redirected and nothing listens on the host. One thread serves them all. Names of the container's networks (container
names, short ids, aliases, links, ``name.network``) are answered from the network manager's state; any other query is
relayed from the host's namespace to the container's upstream servers (its ``--dns`` or the host's resolv.conf), and
a query no upstream answers gets SERVFAIL, so a host without a reachable resolver fails fast instead of hanging.
"""
from __future__ import annotations

import functools
import ipaddress
import logging
import selectors
import socket
import struct
import threading
from typing import Callable, Optional

from machines.runtime.network.links import in_netns_of

log = logging.getLogger("runtime.network")

ADDRESS = "127.0.0.11"
TTL = 600
TYPE_A, TYPE_PTR, TYPE_AAAA = 1, 12, 28
RCODE_FORMERR, RCODE_SERVFAIL, RCODE_REFUSED = 1, 2, 5
UPSTREAM_TIMEOUT = 2.0
MAX_BUSY = 64  # TCP clients and relayed queries in flight at once; beyond that a client gets its answer refused

# container id, query name -> (IPv4 addresses, IPv6 addresses), or None when the name is not one of ours
Lookup = Callable[[str, str], Optional[tuple[list[str], list[str]]]]
# container id, address -> the name to answer a PTR query with, or None
Reverse = Callable[[str, str], Optional[str]]
# container id -> upstream server addresses
Upstreams = Callable[[str], list[str]]


class Query:
    """The parts of a DNS query we answer from: id, flags, the one question and where it ends."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 12:
            raise ValueError("short message")
        self.id, self.flags, qdcount = struct.unpack_from("!HHH", data)
        if self.flags & 0x8000 or qdcount != 1:
            raise ValueError("not a single-question query")
        labels, offset = [], 12
        while True:
            length = data[offset]
            if length == 0:
                offset += 1
                break
            if length & 0xC0:
                raise ValueError("compressed question")
            labels.append(data[offset + 1:offset + 1 + length].decode("ascii", "replace"))
            offset += 1 + length
        self.name = ".".join(labels).lower()
        self.type, self.klass = struct.unpack_from("!HH", data, offset)
        self.question = data[12:offset + 4]


def _encode_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label) + b"\0"


def response(query: Query, rcode: int, records: list[tuple[int, bytes]]) -> bytes:
    """An authoritative answer to ``query``: (type, rdata) records under the question's name."""
    flags = 0x8000 | (query.flags & 0x7900) | 0x0400 | 0x0080 | rcode  # QR, opcode and RD copied, AA, RA
    out = struct.pack("!HHHHHH", query.id, flags, 1, len(records), 0, 0) + query.question
    for kind, rdata in records:
        out += struct.pack("!HHHIH", 0xC00C, kind, 1, TTL, len(rdata)) + rdata
    return out


def failure(data: bytes, rcode: int) -> bytes:
    """An error reply to a message we could not even parse as a question (id and flags kept when present)."""
    ident, flags = struct.unpack_from("!HH", data) if len(data) >= 4 else (0, 0)
    return struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x7900) | 0x0080 | rcode, 0, 0, 0, 0)


def _reverse_address(name: str) -> str | None:
    """The address a PTR query name stands for (``4.3.2.1.in-addr.arpa`` -> ``1.2.3.4``), else None."""
    if name.endswith(".in-addr.arpa"):
        parts = name[:-len(".in-addr.arpa")].split(".")
        text = ".".join(reversed(parts))
    elif name.endswith(".ip6.arpa"):
        nibbles = "".join(reversed(name[:-len(".ip6.arpa")].split(".")))
        text = ":".join(nibbles[i:i + 4] for i in range(0, len(nibbles), 4))
    else:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class Resolver:
    """Serves 127.0.0.11:53 in the namespaces of the containers it listens for; thread-safe."""

    def __init__(self, lookup: Lookup, reverse: Reverse, upstreams: Upstreams) -> None:
        self._lookup = lookup
        self._reverse = reverse
        self._upstreams = upstreams
        self._selector = selectors.DefaultSelector()
        self._sockets: dict[str, list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector.register(self._wake_reader, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._busy = threading.BoundedSemaphore(MAX_BUSY)

    def listen(self, container_id: str, pid: int) -> None:
        """Starts answering inside the network namespace of ``pid`` (a no-op when already listening)."""
        with self._lock:
            if container_id in self._sockets or self._closed:
                return
            udp, tcp = in_netns_of(pid, _bind)
            self._sockets[container_id] = [udp, tcp]
            self._selector.register(udp, selectors.EVENT_READ, (container_id, socket.SOCK_DGRAM))
            self._selector.register(tcp, selectors.EVENT_READ, (container_id, socket.SOCK_STREAM))
            if self._thread is None:  # made here, outside any container namespace: upstream queries use the host's
                self._thread = threading.Thread(target=self._serve, name="dns", daemon=True)
                self._thread.start()

    def forget(self, container_id: str) -> None:
        with self._lock:
            for sock in self._sockets.pop(container_id, []):
                self._selector.unregister(sock)
                sock.close()

    def close(self) -> None:
        """Stops serving; the sockets close, so the containers' namespaces are not kept alive by us."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for container_id in list(self._sockets):
                for sock in self._sockets.pop(container_id):
                    self._selector.unregister(sock)
                    sock.close()
            thread = self._thread
        self._wake_writer.send(b"x")
        if thread is not None:
            thread.join(5)
        self._wake_writer.close()
        self._wake_reader.close()
        self._selector.close()

    def _serve(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data is None:
                    return
                container_id, kind = key.data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if kind == socket.SOCK_DGRAM:
                        data, peer = sock.recvfrom(4096)
                        self._handle(container_id, data, functools.partial(_reply_to, sock, peer))
                    else:
                        conn, _ = sock.accept()
                        if not self._busy.acquire(blocking=False):
                            conn.close()  # a flood of idle connections must not pile up threads
                            continue
                        threading.Thread(target=self._serve_tcp, args=(container_id, conn), daemon=True).start()
                except OSError:  # a socket closed by forget() between select and use
                    continue

    def _serve_tcp(self, container_id: str, conn: socket.socket) -> None:
        """One query per message, each prefixed with its length (RFC 1035 4.2.2), until the client closes."""
        with conn, _Release(self._busy):
            conn.settimeout(10)
            try:
                while True:
                    header = _recv_exact(conn, 2)
                    if not header:
                        return
                    data = _recv_exact(conn, struct.unpack("!H", header)[0])
                    done = threading.Event()
                    replies: list[bytes] = []

                    def send(reply: bytes) -> None:
                        replies.append(reply)
                        done.set()

                    self._handle(container_id, data, send, tcp=True)
                    done.wait(UPSTREAM_TIMEOUT * 4)
                    if not replies:
                        return
                    conn.sendall(struct.pack("!H", len(replies[0])) + replies[0])
            except (OSError, struct.error):
                return

    def _handle(self, container_id: str, data: bytes, send: Callable[[bytes], object], tcp: bool = False) -> None:
        """Answers from the networks when the name is ours, else relays on a thread of its own."""
        try:
            query = Query(data)
        except (ValueError, IndexError, struct.error):
            send(failure(data, RCODE_FORMERR))
            return
        answer = self._local(container_id, query)
        if answer is not None:
            send(answer)
            return
        if not self._busy.acquire(blocking=False):
            send(response(query, RCODE_REFUSED, []))  # too many relays in flight: refuse at once rather than queue
            return
        threading.Thread(target=self._forward, args=(container_id, query, data, send, tcp), daemon=True).start()

    def _local(self, container_id: str, query: Query) -> bytes | None:
        if query.type == TYPE_PTR:
            address = _reverse_address(query.name)
            name = self._reverse(container_id, address) if address else None
            return response(query, 0, [(TYPE_PTR, _encode_name(name))]) if name else None
        found = self._lookup(container_id, query.name)
        if found is None:
            return None
        v4, v6 = found
        records: list[tuple[int, bytes]] = []
        if query.type == TYPE_A:
            records = [(TYPE_A, ipaddress.IPv4Address(a).packed) for a in v4]
        elif query.type == TYPE_AAAA:
            records = [(TYPE_AAAA, ipaddress.IPv6Address(a).packed) for a in v6]
        return response(query, 0, records)  # a name of ours without records of that type: NOERROR, no data

    def _forward(self, container_id: str, query: Query, data: bytes, send: Callable[[bytes], object],
                 tcp: bool) -> None:
        with _Release(self._busy):
            for server in self._upstreams(container_id):
                try:
                    reply = _ask(server, data, tcp)
                except OSError as exc:
                    log.debug("DNS upstream %s: %s", server, exc)
                    continue
                if reply:
                    send(reply)
                    return
            send(response(query, RCODE_SERVFAIL, []))


class _Release:
    """Gives a slot of the busy semaphore back when a TCP client or a relay is done."""

    def __init__(self, slots: threading.BoundedSemaphore) -> None:
        self.slots = slots

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.slots.release()


def _reply_to(sock: socket.socket, peer: tuple[str, int], reply: bytes) -> None:
    sock.sendto(reply, peer)


def _bind() -> tuple[socket.socket, socket.socket]:
    """Run inside the container's namespace: the UDP and TCP sockets of 127.0.0.11:53."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind((ADDRESS, 53))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((ADDRESS, 53))
        tcp.listen(16)
    except OSError:
        udp.close()
        tcp.close()
        raise
    udp.setblocking(False)
    tcp.setblocking(False)
    return udp, tcp


def _ask(server: str, data: bytes, tcp: bool) -> bytes:
    """One exchange with an upstream server; an unreachable or silent one raises OSError quickly."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as sock:
        sock.settimeout(UPSTREAM_TIMEOUT)
        sock.connect((server, 53))
        if tcp:
            sock.sendall(struct.pack("!H", len(data)) + data)
            length = struct.unpack("!H", _recv_exact(sock, 2))[0]
            return _recv_exact(sock, length)
        sock.send(data)
        return sock.recv(65535)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            if remaining == size:
                return b""
            raise OSError("connection closed mid-message")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
