"""The userland port proxy: published ports that work with or without iptables.

Like Docker's ``docker-proxy``, each published port is a socket the daemon holds on the host address, relaying to
the container's address. Holding the socket also reserves the port, so a second container cannot take it. One
thread waits on each listening socket; TCP connections get a pump thread per direction (half-close is passed on);
UDP keeps one upstream socket per client address and drops it after a quiet minute.
"""
from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from typing import Any

log = logging.getLogger("runtime.network")

UDP_IDLE_SECONDS = 60.0
CONNECT_TIMEOUT = 5.0
BUFFER = 65536


def _family(host_ip: str) -> int:
    return socket.AF_INET6 if ":" in host_ip else socket.AF_INET


def bind_socket(proto: str, host_ip: str, host_port: int) -> socket.socket:
    """A bound (and for TCP listening) socket; raises OSError when the port is taken."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(_family(host_ip), kind)
    try:
        if proto == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if _family(host_ip) == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host_ip, host_port))
        if proto == "tcp":
            sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class PortProxy:
    """Relays one bound host socket to ``(container_ip, container_port)`` until ``close()``."""

    def __init__(self, sock: socket.socket, proto: str, container_ip: str, container_port: int) -> None:
        self.sock = sock
        self.proto = proto
        self.target = (container_ip, container_port)
        self.host_ip, self.host_port = sock.getsockname()[:2]
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._udp_peers: dict[tuple, tuple[socket.socket, float]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"proxy-{proto}-{self.host_port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops listening (the port is free when this returns) and cuts the relayed connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._open:
                _shutdown(conn)
        os.write(self._wake_w, b"x")
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _serve(self) -> None:
        try:
            while True:
                watched: list[Any] = [self.sock, self._wake_r]  # a socket and a pipe's descriptor
                ready, _, _ = select.select(watched, [], [])
                if self._wake_r in ready:
                    return
                if self.proto == "tcp":
                    self._accept()
                else:
                    self._datagram()
        except Exception:  # a proxy must never take the daemon down
            log.exception("port proxy %s/%s stopped", self.host_port, self.proto)
        finally:
            self.sock.close()

    # --- TCP -----------------------------------------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            client, _ = self.sock.accept()
        except OSError:
            return
        threading.Thread(target=self._relay, args=(client,), name="proxy-conn", daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            log.debug("proxy to %s:%s failed: %s", self.target[0], self.target[1], exc)
            client.close()
            return
        upstream.settimeout(None)
        for conn in (client, upstream):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closed:
                client.close()
                upstream.close()
                return
            self._open.update((client, upstream))
        back = threading.Thread(target=_pump, args=(upstream, client), name="proxy-pump", daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        with self._lock:
            self._open.difference_update((client, upstream))
        client.close()
        upstream.close()

    # --- UDP -----------------------------------------------------------------------------------------------------

    def _datagram(self) -> None:
        try:
            data, client = self.sock.recvfrom(BUFFER)
        except OSError:
            return
        upstream = self._udp_upstream(client)
        if upstream is not None:
            try:
                upstream.send(data)
            except OSError as exc:
                log.debug("udp proxy send failed: %s", exc)

    def _udp_upstream(self, client: tuple) -> socket.socket | None:
        now = time.monotonic()
        with self._lock:
            known = self._udp_peers.get(client)
            if known is not None:
                self._udp_peers[client] = (known[0], now)
                return known[0]
            upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                upstream.connect(self.target)
            except OSError as exc:
                upstream.close()
                log.debug("udp proxy connect failed: %s", exc)
                return None
            upstream.settimeout(UDP_IDLE_SECONDS / 4)
            self._udp_peers[client] = (upstream, now)
            self._open.add(upstream)
        threading.Thread(target=self._udp_replies, args=(upstream, client), name="proxy-udp", daemon=True).start()
        return upstream

    def _udp_replies(self, upstream: socket.socket, client: tuple) -> None:
        """Sends the container's answers back to ``client`` from the published port, as the client expects.

        The thread owns ``upstream``: it ends after a quiet minute, on ``close()`` (which shuts the socket down to
        wake it), or on an error such as ICMP port unreachable from the container.
        """
        try:
            while True:
                try:
                    data = upstream.recv(BUFFER)
                except socket.timeout:
                    with self._lock:
                        if time.monotonic() - self._udp_peers[client][1] > UDP_IDLE_SECONDS:
                            return
                    continue
                if self._closed:
                    return
                self.sock.sendto(data, client)
        except OSError:
            return
        finally:
            with self._lock:
                self._udp_peers.pop(client, None)
                self._open.discard(upstream)
            upstream.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copies until EOF, then half-closes ``sink`` so the other side sees the end of the stream."""
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    try:
        while True:
            count = source.recv_into(buffer)
            if not count:
                break
            sink.sendall(view[:count])
    except OSError:
        _shutdown(source)
    try:
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
