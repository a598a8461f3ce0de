"""Ports of a machine on this computer's loopback, carried by the machine's pinned SSH connection.

Like Lima's and podman machine's port forwarding, nothing has to be open on the host but SSH: a ``TCPForward``
listens on 127.0.0.1 here and opens a ``direct-tcpip`` channel per connection (``ssh -L``); ``Connection.
request_remote_forward`` is the other way (``ssh -R``); ``SocksForward`` is ``ssh -D`` (SOCKS5). ``PortWatcher``
follows the runtime's event stream (``GET /events``, read through the runtime's unix socket over SSH, so it works
for ``--api ssh`` machines) and keeps one forward per published port of every running container, on the same
port number here, removed when the container stops. ``UDPForward`` carries UDP: SSH has only streams, so a small
relay on the machine turns framed datagrams back into UDP, one relay per client address.

Forwards that outlive the command (``machines port NAME 8080:80``, ``machines env --ports auto``) run in detached
processes (``python -m machines.ports``), one per forward, each recorded in ``<machine dir>/ports/<key>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import logging
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from machines import detached
from machines.errors import MachinesError, SSHError, StateError, UsageError
from machines.store import CONFIG_FILE

if TYPE_CHECKING:
    from machines.machine import Machine
    from machines.ssh import Connection

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
STATE_DIR = "ports"
RUNTIME_SOCKET = "/var/run/docker.sock"  # bootstrap.service.SOCKET_PATH, the default when the record names none
UDP_IDLE_SECONDS = 60.0  # a UDP client's relay on the machine ends after this long without a datagram
SPEC = re.compile(r"^(\d{1,5})(?::(\d{1,5}))?(?:/(tcp|udp))?$")


@dataclasses.dataclass(frozen=True)
class PortSpec:
    """One forward: ``listen`` is the port opened (here, or on the machine when ``reverse``), ``target`` the port
    its connections reach on the other side's loopback."""

    listen: int
    target: int
    reverse: bool = False
    udp: bool = False

    @classmethod
    def parse(cls, text: str, *, reverse: bool = False, udp: bool = False) -> PortSpec:
        """``8080`` (same port both sides) or ``8080:80`` (listen:target); ``/udp`` or ``--udp`` for UDP."""
        match = SPEC.fullmatch(text.strip())
        if not match:
            raise UsageError(f"invalid port {text!r}: expected PORT or LISTEN:TARGET, e.g. 8080 or 8080:80")
        udp = udp or match.group(3) == "udp"
        if udp and reverse:
            raise UsageError("UDP ports are forwarded from this computer to the machine only, not --reverse")
        listen = int(match.group(1))
        target = int(match.group(2) or listen)
        for port in (listen, target):
            if not 1 <= port <= 65535:
                raise UsageError(f"invalid port {port}: ports are 1 to 65535")
        return cls(listen, target, reverse, udp)

    @property
    def key(self) -> str:
        """Unique per listening side and protocol: ``L8080`` here, ``U53`` here for UDP, ``R9000`` on the machine."""
        return f"{'R' if self.reverse else 'U' if self.udp else 'L'}{self.listen}"

    def __str__(self) -> str:
        return f"{'-R ' if self.reverse else ''}{self.listen}:{self.target}{'/udp' if self.udp else ''}"

    def describe(self) -> str:
        if self.reverse:
            return f"{self} (machine's {LOOPBACK}:{self.listen} -> {LOOPBACK}:{self.target} here)"
        return f"{self} ({LOOPBACK}:{self.listen} here -> machine's {LOOPBACK}:{self.target})"

    def open(self, connection: Connection) -> Any:
        """Start this forward on ``connection``; returns what ``close()`` ends (None for a reverse forward, which
        lasts as long as the connection)."""
        if self.reverse:
            connection.request_remote_forward(self.listen, LOOPBACK, self.target)
            return None
        if self.udp:
            return UDPForward(connection, self.listen, self.target)
        return TCPForward(connection, self.listen, LOOPBACK, self.target)


class _Listener:
    """A TCP listener here whose connections are handled on threads; ``close()`` stops accepting."""

    def __init__(self, connection: Connection, port: int, bind: str = LOOPBACK) -> None:
        self.connection = connection
        self._server = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._server.bind((bind, port))
        except OSError as error:
            self._server.close()
            raise StateError(f"cannot listen on {bind}:{port}: {error.strerror or error}") from None
        self._server.listen(128)
        self.bind, self.port = self._server.getsockname()[:2]
        self._closed = threading.Event()
        threading.Thread(target=self._serve, name=f"listen {bind}:{self.port}", daemon=True).start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, origin = self._server.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._guarded, args=(client, origin), daemon=True).start()

    def _guarded(self, client: socket.socket, origin: tuple[str, int]) -> None:
        try:
            self.handle(client, origin)
        except (MachinesError, OSError, EOFError) as error:
            log.debug("connection from %s failed: %s", origin, error)
            client.close()

    def handle(self, client: socket.socket, origin: tuple[str, int]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()

    def __enter__(self) -> _Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TCPForward(_Listener):
    """``ssh -L``: ``bind:port`` here reaches ``target_host:target_port`` as the machine sees it."""

    def __init__(self, connection: Connection, port: int, target_host: str, target_port: int,
                 bind: str = LOOPBACK) -> None:
        self.target = (target_host, target_port)
        super().__init__(connection, port, bind)

    def handle(self, client: socket.socket, origin: tuple[str, int]) -> None:
        from machines.ssh import bridge

        channel = self.connection.open_tcp(*self.target, origin=origin[:2])
        bridge(channel, client)


class SocksForward(_Listener):
    """``ssh -D``: a SOCKS5 proxy (no authentication, CONNECT only, as OpenSSH's) whose connections the machine
    makes."""

    def handle(self, client: socket.socket, origin: tuple[str, int]) -> None:
        from machines.ssh import bridge

        target = _socks5_request(client)
        if target is None:
            client.close()
            return
        try:
            channel = self.connection.open_tcp(*target, origin=origin[:2])
        except SSHError:
            client.sendall(b"\x05\x05\x00\x01" + bytes(6))  # connection refused
            client.close()
            return
        client.sendall(b"\x05\x00\x00\x01" + bytes(6))
        bridge(channel, client)


# A relay on the machine (python3 is on every provisioned host): datagrams framed with a 2-byte length on the SSH
# session, one session per client address here, as docker-proxy keeps one upstream socket per UDP client.
_UDP_RELAY = (
    "import os,socket,struct,sys,threading\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.connect(('127.0.0.1',int(sys.argv[1])))\n"
    "s.settimeout(float(sys.argv[2]))\n"
    "def down():\n"
    " while True:\n"
    "  try: d=s.recv(65535)\n"
    "  except ConnectionRefusedError: continue\n"
    "  except OSError: os._exit(0)\n"
    "  os.write(1,struct.pack('!H',len(d))+d)\n"
    "threading.Thread(target=down,daemon=True).start()\n"
    "def rd(n):\n"
    " b=b''\n"
    " while len(b)<n:\n"
    "  c=os.read(0,n-len(b))\n"
    "  if not c: os._exit(0)\n"
    "  b+=c\n"
    " return b\n"
    "while True:\n"
    " n,=struct.unpack('!H',rd(2))\n"
    " try: s.send(rd(n))\n"
    " except OSError: pass\n"
)


class UDPForward:
    """UDP on ``127.0.0.1:port`` here reaches the machine's ``127.0.0.1:target``: each client address gets its own
    relay on the machine (over an SSH session) that lives until a quiet ``UDP_IDLE_SECONDS``."""

    def __init__(self, connection: Connection, port: int, target: int) -> None:
        self.connection = connection
        self.target = target
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._socket.bind((LOOPBACK, port))
        except OSError as error:
            self._socket.close()
            raise StateError(f"cannot listen on {LOOPBACK}:{port}/udp: {error.strerror or error}") from None
        self.port = self._socket.getsockname()[1]
        self._relays: dict[tuple[str, int], Any] = {}
        self._closed = threading.Event()
        threading.Thread(target=self._serve, name=f"udp {port}", daemon=True).start()

    def _relay(self, client: tuple[str, int]) -> Any:
        relay = self._relays.get(client)
        if relay is not None and not relay.closed and not relay.exit_status_ready():
            return relay
        import shlex

        relay = self.connection.transport.open_session()
        relay.exec_command(f"python3 -c {shlex.quote(_UDP_RELAY)} {self.target} {UDP_IDLE_SECONDS:g}")
        self._relays[client] = relay
        threading.Thread(target=self._replies, args=(relay, client), daemon=True).start()
        return relay

    def _replies(self, relay: Any, client: tuple[str, int]) -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                (size,) = struct.unpack("!H", _read_exact(relay, 2))
                self._socket.sendto(_read_exact(relay, size), client)
        relay.close()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                data, client = self._socket.recvfrom(65535)
                self._relay(client).sendall(struct.pack("!H", len(data)) + data)
            except (OSError, EOFError, MachinesError) as error:
                if self._closed.is_set():
                    return
                log.debug("UDP datagram to %s dropped: %s", self.connection.name, error)

    def close(self) -> None:
        self._closed.set()
        self._socket.close()
        for relay in self._relays.values():
            relay.close()


def _read_exact(source: Any, size: int) -> bytes:
    """``size`` bytes from a socket or an SSH channel; EOFError when it closes first."""
    data = b""
    while len(data) < size:
        chunk = source.recv(size - len(data))
        if not chunk:
            raise EOFError("closed before the end of a message")
        data += chunk
    return data


def _socks5_request(client: socket.socket) -> tuple[str, int] | None:
    """The CONNECT target a SOCKS5 client asks for (RFC 1928), or None after answering a request we refuse."""
    client.settimeout(30)
    version, count = _read_exact(client, 2)
    methods = _read_exact(client, count)
    if version != 5 or 0 not in methods:
        client.sendall(b"\x05\xff")  # no acceptable method
        return None
    client.sendall(b"\x05\x00")
    version, command, _, address_type = _read_exact(client, 4)
    if address_type == 1:
        host = socket.inet_ntop(socket.AF_INET, _read_exact(client, 4))
    elif address_type == 3:
        host = _read_exact(client, _read_exact(client, 1)[0]).decode("idna")
    elif address_type == 4:
        host = socket.inet_ntop(socket.AF_INET6, _read_exact(client, 16))
    else:
        client.sendall(b"\x05\x08\x00\x01" + bytes(6))  # address type not supported
        return None
    (port,) = struct.unpack("!H", _read_exact(client, 2))
    if version != 5 or command != 1:
        client.sendall(b"\x05\x07\x00\x01" + bytes(6))  # command not supported (BIND, UDP ASSOCIATE)
        return None
    client.settimeout(None)
    return host, port


# -- the runtime's API, read over SSH -------------------------------------------------------------------------
class _SocketHTTPConnection(http.client.HTTPConnection):
    """http.client on a socket that is already connected (the runtime's unix socket, bridged over SSH)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__("localhost")
        self.sock = sock

    def connect(self) -> None:  # already connected
        pass


class RuntimeAPI:
    """GET requests to the machine's runtime through its unix socket over SSH (no TCP port needed)."""

    def __init__(self, machine: Machine, connection: Connection) -> None:
        self.connection = connection
        self.socket_path = str(machine.runtime.get("socket") or RUNTIME_SOCKET)

    def _request(self, path: str) -> http.client.HTTPResponse:
        conn = _SocketHTTPConnection(self.connection.open_unix(self.socket_path))
        conn.request("GET", path, headers={"Host": "docker"})
        response = conn.getresponse()
        if response.status != 200:
            raise StateError(f"the runtime answered {response.status} to GET {path}: {response.read(500)!r}")
        return response

    def get(self, path: str) -> Any:
        with contextlib.closing(self._request(path)) as response:
            return json.loads(response.read())

    def events(self) -> Iterator[dict[str, Any]]:
        """Container events as they happen (the stream ends when the connection does)."""
        filters = json.dumps({"type": ["container"]})
        with contextlib.closing(self._request(f"/events?filters={_quote(filters)}")) as response:
            while line := response.readline():
                if line.strip():
                    yield json.loads(line)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def published_ports(containers: list[dict[str, Any]]) -> dict[PortSpec, str]:
    """Host ports published by running containers (``GET /containers/json``), TCP and UDP, with the container's
    id: each as the forward of the same port here."""
    ports: dict[PortSpec, str] = {}
    for container in containers:
        for port in container.get("Ports") or []:
            if port.get("PublicPort") and port.get("Type", "tcp") in ("tcp", "udp"):
                number = int(port["PublicPort"])
                spec = PortSpec(number, number, udp=port.get("Type") == "udp")
                ports.setdefault(spec, str(container.get("Id", "")))
    return ports


class PortWatcher:
    """Keeps ``127.0.0.1:P`` here forwarded to the machine's port P for every port (TCP or UDP) a running container
    publishes; re-reads the list on each container start, die or destroy event."""

    def __init__(self, machine: Machine, *, report: Any = None) -> None:
        self.machine = machine
        self.report = report or (lambda line: None)
        self.forwards: dict[PortSpec, Any] = {}
        self._stopped = threading.Event()

    def sync(self, api: RuntimeAPI, connection: Connection) -> None:
        wanted = published_ports(api.get("/containers/json"))
        for spec in sorted(set(self.forwards) - set(wanted), key=str):
            self.forwards.pop(spec).close()
            self.report(f"removed {LOOPBACK}:{spec.listen}{'/udp' if spec.udp else ''}")
        for spec in sorted(set(wanted) - set(self.forwards), key=str):
            shown = f"{spec.listen}{'/udp' if spec.udp else ''}"
            try:
                self.forwards[spec] = spec.open(connection)
            except StateError as error:
                self.report(f"not forwarding {shown}: {error}")
                continue
            self.report(f"forwarding {LOOPBACK}:{shown} to {self.machine.name}:{spec.listen} "
                        f"(container {wanted[spec][:12]})")

    def run(self) -> None:
        """Follow the events until ``stop()``; reconnects when the stream ends (the runtime restarted)."""
        connection = self.machine.ssh()
        api = RuntimeAPI(self.machine, connection)
        try:
            while not self._stopped.is_set():
                try:
                    events = api.events()
                    self.sync(api, connection)  # after subscribing: nothing started in between is missed
                    for event in events:
                        if event.get("Action", event.get("status")) in ("start", "die", "destroy", "stop"):
                            self.sync(api, connection)
                        if self._stopped.is_set():
                            break
                except (MachinesError, OSError, http.client.HTTPException, ValueError) as error:
                    log.debug("event stream of %s ended: %s", self.machine.name, error)
                self._stopped.wait(1.0)
        finally:
            self.close()

    def stop(self) -> None:
        self._stopped.set()

    def close(self) -> None:
        for forward in self.forwards.values():
            forward.close()
        self.forwards.clear()


# -- forwards in the background -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Background:
    """A detached forwarding process of a machine: one port forward, or the ``auto`` watcher."""

    machine: str
    key: str  # PortSpec.key, or "auto"
    spec: str
    pid: int

    def as_row(self) -> str:
        return f"{self.machine}\t{self.spec}"


def _state_dir(machine: Machine) -> Path:
    return machine.dir / STATE_DIR


def _alive(pid: int) -> bool:
    """A live process of ours running this module (a recycled pid, or a zombie, is not)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        return status != "Z" and b"machines.ports" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def running(machine: Machine) -> list[Background]:
    """The machine's live background forwards (state files of dead ones are dropped)."""
    found = []
    folder = _state_dir(machine)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(state["pid"])):
            found.append(Background(machine.name, path.stem, str(state["spec"]), int(state["pid"])))
        else:
            path.unlink(missing_ok=True)
    return found


def start(machine: Machine, key: str, arguments: list[str], spec: str) -> Background:
    """Start ``python -m machines.ports ARGUMENTS`` detached for the machine unless the same key runs already;
    returns once it serves (it writes its state file then) or fails with the last line it logged."""
    for live in running(machine):
        if live.key == key:
            if live.spec != spec:
                removal = {"L": "{}", "U": "{}/udp", "R": "R:{}"}[key[0]].format(key[1:])
                raise StateError(f"{machine.name} already forwards {live.spec}: 'machines port rm {machine.name} "
                                 f"{removal}' first")
            return live
    arguments = ["--storage-path", str(machine.store.root), "--key", key, "--spec", spec, machine.name, *arguments]
    pid = detached.start("machines.ports", arguments, _state_dir(machine) / f"{key}.json",
                         failure=f"{machine.name}: forwarding {spec} failed")
    return Background(machine.name, key, spec, pid)


def stop(machine: Machine, key: str | None = None) -> list[Background]:
    """Stop the machine's background forward ``key`` (every one when None); returns what was stopped."""
    stopped = []
    for live in running(machine):
        if key is not None and live.key != key:
            continue
        os.kill(live.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _alive(live.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        (_state_dir(machine) / f"{live.key}.json").unlink(missing_ok=True)
        stopped.append(live)
    return stopped


def _serve(arguments: argparse.Namespace) -> None:
    """The detached process: serve one forward (or the watcher) until SIGTERM or the machine's removal."""
    from machines.default import Machines

    machine = Machines(arguments.storage_path).get(arguments.name)
    done = threading.Event()
    closers: list[Any] = []
    connection = machine.ssh()
    if arguments.auto:
        watcher = PortWatcher(machine, report=lambda line: print(line, flush=True))
        threading.Thread(target=watcher.run, daemon=True).start()
        closers.append(watcher.stop)
    else:
        spec = PortSpec.parse(arguments.port, reverse=arguments.reverse, udp=arguments.udp)
        forward = spec.open(connection)
        if forward is not None:
            closers.append(forward.close)
    state = _state_dir(machine) / f"{arguments.key}.json"
    temporary = state.with_suffix(".tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "spec": arguments.spec}))
    os.replace(temporary, state)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    carrier = connection.transport
    while not done.wait(1.0):
        if not (machine.dir / CONFIG_FILE).is_file():  # ``machines rm``: nothing left to forward to
            break
        if arguments.reverse and not carrier.is_active():  # the host restarted: ask for the forward again
            with contextlib.suppress(MachinesError):
                carrier = connection.transport
                connection.request_remote_forward(spec.listen, LOOPBACK, spec.target)
    for close in closers:
        close()
    connection.close()
    state.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m machines.ports", description=__doc__)
    parser.add_argument("--storage-path", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--reverse", action="store_true")
    parser.add_argument("--udp", action="store_true")
    parser.add_argument("--auto", action="store_true")
    parser.add_argument("name")
    parser.add_argument("port", nargs="?")
    arguments = parser.parse_args(argv)
    return detached.main(lambda: _serve(arguments))


if __name__ == "__main__":
    sys.exit(main())
