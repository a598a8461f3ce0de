"""SSH to machines: one ``Connection`` class over paramiko, like Fabric's, with the host key pinned.

The host key is learnt once, at create (from the driver when it knows it, else from the first connection), stored
in ``config.json`` and checked on every later connection; a different key is refused, never accepted silently.
Sockets get TCP_NODELAY: an exec round trip drops from ~48 ms to ~4 ms.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import os
import select
import shlex
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import paramiko

from machines.drivers.base import SSHDetails
from machines.errors import HostKeyMismatchError, MachineTimeoutError, SSHError
from machines.hostkeys import key_line, sha256_fingerprint

log = logging.getLogger(__name__)

COPY_CHUNK = 32768


@dataclasses.dataclass(frozen=True)
class Result:
    """What a remote command did. ``stdout``/``stderr`` are decoded text (UTF-8, undecodable bytes replaced)."""

    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class CommandError(SSHError):
    """A remote command exited non-zero while ``check=True``; ``result`` holds its output."""

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message)
        self.result = result


class _PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accepts the host's key only when it equals the pinned one, or (no pin yet) records it for pinning."""

    def __init__(self, expected: str | None, where: str) -> None:
        self.expected = expected
        self.where = where
        self.seen: str | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        seen = key_line(key)
        if self.expected is not None and seen.split()[:2] != self.expected.split()[:2]:
            raise HostKeyMismatchError(_mismatch_message(self.where, self.expected, seen))
        self.seen = seen


def _mismatch_message(where: str, expected: str, seen: str) -> str:
    return (
        f"host key of {where} has changed: expected {sha256_fingerprint(expected)}, got {sha256_fingerprint(seen)}; "
        "refusing to connect (a different host answers at that address, or someone is intercepting). "
        "If the host was rebuilt on purpose, remove and re-create the machine"
    )


class Connection:
    """An SSH connection to one machine. Connects lazily; usable as a context manager; thread-safe for ``run``.

    ``host_key`` is the pinned key (``"ssh-ed25519 AAAA..."``); ``None`` means trust on first use, which only the
    create transaction may do. After connecting, ``seen_host_key`` holds the key the host presented.
    """

    def __init__(
        self,
        details: SSHDetails,
        host_key: str | None,
        *,
        name: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.details = details
        self.host_key = host_key
        self.name = name or details.host
        self.connect_timeout = connect_timeout
        self.seen_host_key: str | None = None
        self._client: paramiko.SSHClient | None = None
        self._connect_lock = threading.Lock()
        self._forwards: dict[int, tuple[str, int]] = {}  # remote port -> where its connections go here

    # -- connection -----------------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"{self.details.user}@{self.details.host}:{self.details.port}"

    def connect(self) -> Connection:
        with self._connect_lock:
            transport = self._client.get_transport() if self._client is not None else None
            if transport is not None and transport.is_active():
                return self
            self._client = self._open()
        return self

    def _open(self) -> paramiko.SSHClient:
        details = self.details
        try:
            pkey = paramiko.PKey.from_path(details.key_path)
        except (OSError, paramiko.SSHException, ValueError) as error:
            raise SSHError(f"cannot read SSH key {details.key_path}: {error}") from None
        client = paramiko.SSHClient()
        policy = _PinnedKeyPolicy(self.host_key, f"{self.name} ({self.where})")
        if self.host_key:
            # Known to paramiko, so it negotiates this key type and compares the key itself.
            key_type, key_data = self.host_key.split()[:2]
            host_name = details.host if details.port == 22 else f"[{details.host}]:{details.port}"
            client.get_host_keys().add(host_name, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(key_data)))
        client.set_missing_host_key_policy(policy)
        sock = None
        try:
            sock = socket.create_connection((details.host, details.port), timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.connect(
                details.host,
                port=details.port,
                username=details.user,
                pkey=pkey,
                sock=sock,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                look_for_keys=False,
                allow_agent=False,
            )
        except paramiko.BadHostKeyException as error:
            client.close()
            raise HostKeyMismatchError(
                _mismatch_message(f"{self.name} ({self.where})", self.host_key or "", key_line(error.key))
            ) from None
        except HostKeyMismatchError:
            client.close()
            raise
        except (OSError, paramiko.SSHException, EOFError) as error:
            client.close()
            if sock is not None:
                sock.close()
            raise SSHError(f"cannot SSH to {self.name} ({self.where}): {_describe(error)}") from None
        transport = client.get_transport()
        assert transport is not None
        self.seen_host_key = key_line(transport.get_remote_server_key())
        transport.set_keepalive(30)
        return client

    @property
    def transport(self) -> paramiko.Transport:
        self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        assert transport is not None
        return transport

    def close(self) -> None:
        with self._connect_lock:
            if self._client is not None:
                transport = self._client.get_transport()
                self._client.close()
                self._client = None
                # paramiko's close does not wait for its transport thread; one still running while the interpreter
                # exits can abort it ("Fatal Python error ... finalizing"), so wait for it here.
                if transport is not None and transport is not threading.current_thread():
                    transport.join(5)

    def __enter__(self) -> Connection:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- commands -------------------------------------------------------------------------------------------
    def wrap_sudo(self, command: str) -> str:
        """The command as root: unchanged for root, else through ``sudo -n`` (never prompts, fails instead)."""
        if self.details.user == "root":
            return command
        return f"sudo -n sh -c {shlex.quote(command)}"

    def run(
        self,
        command: str,
        sudo: bool = False,
        check: bool = True,
        input: str | bytes | None = None,  # noqa: A002 - the name subprocess uses
        timeout: float | None = None,
    ) -> Result:
        """Run ``command`` through the login user's shell and collect its output."""
        full_command = self.wrap_sudo(command) if sudo else command
        try:
            channel = self.transport.open_session()
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise SSHError(f"cannot open a session on {self.name}: {_describe(error)}") from None
        with channel:
            channel.settimeout(timeout)
            try:
                channel.exec_command(full_command)
                errors: list[bytes] = []
                stderr_reader = threading.Thread(target=_collect, args=(channel.recv_stderr, errors), daemon=True)
                stderr_reader.start()
                if input is not None:
                    channel.sendall(input.encode() if isinstance(input, str) else input)
                channel.shutdown_write()
                output = _read_all(channel.recv)
                stderr_reader.join()
                exit_status = channel.recv_exit_status()
            except TimeoutError:
                raise MachineTimeoutError(f"command on {self.name} did not finish within {timeout}s: {command}") from None
            except (paramiko.SSHException, OSError, EOFError) as error:
                raise SSHError(f"command on {self.name} failed: {_describe(error)}") from None
        result = Result(exit_status, output.decode(errors="replace"), b"".join(errors).decode(errors="replace"))
        if check and exit_status != 0:
            detail = result.stderr.strip().splitlines()[-1:] or result.stdout.strip().splitlines()[-1:] or [""]
            raise CommandError(
                f"command on {self.name} exited with status {exit_status}: {command}" + (f": {detail[0]}" if detail[0] else ""),
                result,
            )
        return result

    # -- files ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def sftp(self) -> Iterator[paramiko.SFTPClient]:
        try:
            client = self.transport.open_sftp_client()
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise SSHError(f"cannot open SFTP on {self.name}: {_describe(error)}") from None
        try:
            yield client
        finally:
            client.close()

    def put_bytes(self, data: bytes, remote: str, mode: int = 0o644, sudo: bool = False) -> None:
        """Write ``data`` to the remote path atomically (temp + rename); ``sudo`` for root-owned places."""
        temp = f"{remote}.tmp-{os.getpid()}-{threading.get_ident()}"
        if sudo and self.details.user != "root":
            self.run(
                f"cat > {shlex.quote(temp)} && chmod {mode:o} {shlex.quote(temp)} && mv -f {shlex.quote(temp)} {shlex.quote(remote)}",
                sudo=True,
                input=data,
            )
            return
        try:
            with self.sftp() as sftp:
                with sftp.open(temp, "wb") as handle:
                    handle.set_pipelined(True)
                    handle.write(data)
                sftp.chmod(temp, mode)
                sftp.posix_rename(temp, remote)
        except OSError as error:
            raise SSHError(f"cannot write {remote} on {self.name}: {_describe(error)}") from None

    def put(self, local: str | os.PathLike[str], remote: str, mode: int | None = None, sudo: bool = False) -> None:
        """Upload one file; ``mode`` defaults to the local file's permission bits."""
        local_path = Path(local)
        file_mode = mode if mode is not None else stat.S_IMODE(local_path.stat().st_mode)
        self.put_bytes(local_path.read_bytes(), remote, file_mode, sudo=sudo)

    def get_bytes(self, remote: str) -> bytes:
        try:
            with self.sftp() as sftp, sftp.open(remote, "rb") as handle:
                handle.prefetch()
                return handle.read()
        except OSError as error:
            raise SSHError(f"cannot read {remote} on {self.name}: {_describe(error)}") from None

    def get(self, remote: str, local: str | os.PathLike[str]) -> None:
        """Download one file, keeping its permission bits."""
        try:
            with self.sftp() as sftp:
                mode = stat.S_IMODE(sftp.stat(remote).st_mode or 0o644)
                sftp.get(remote, str(local))
            os.chmod(local, mode)
        except OSError as error:
            raise SSHError(f"cannot copy {remote} from {self.name}: {_describe(error)}") from None

    # -- interactive use ------------------------------------------------------------------------------------
    def _session(self, forward_agent: bool) -> paramiko.Channel:
        """A new session channel; with ``forward_agent`` the local ssh-agent answers the host (``ssh -A``)."""
        channel = self.transport.open_session()
        if forward_agent:
            import paramiko.agent

            paramiko.agent.AgentRequestHandler(channel)
        return channel

    def interactive(self, command: str | None = None, *, forward_agent: bool = False) -> int:
        """A shell (or ``command``) on a PTY wired to this terminal; returns the remote exit status."""
        import termios
        import tty

        columns, rows = os.get_terminal_size(sys.stdin.fileno())
        channel = self._session(forward_agent)
        channel.get_pty(term=os.environ.get("TERM", "xterm"), width=columns, height=rows)
        if command is None:
            channel.invoke_shell()
        else:
            channel.exec_command(command)

        def resize(*_: object) -> None:
            with contextlib.suppress(OSError, paramiko.SSHException):
                channel.resize_pty(*os.get_terminal_size(sys.stdin.fileno()))

        previous_handler = signal.signal(signal.SIGWINCH, resize)
        saved = termios.tcgetattr(sys.stdin.fileno())
        try:
            tty.setraw(sys.stdin.fileno(), termios.TCSANOW)  # keep what was typed ahead
            _pump_terminal(channel, sys.stdin.fileno(), sys.stdout.fileno())
        finally:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, previous_handler)
        return channel.recv_exit_status()

    def stream(self, command: str, stdin: IO[bytes] | None = None, *, forward_agent: bool = False) -> int:
        """Run ``command`` with its output streamed to ours (and ``stdin`` fed to it); returns its exit status."""
        channel = self._session(forward_agent)
        if command:
            channel.exec_command(command)
        else:
            channel.invoke_shell()  # no PTY (``ssh -T``): a shell reading stdin
        if stdin is not None:
            threading.Thread(target=_feed, args=(stdin, channel), daemon=True).start()
        else:
            channel.shutdown_write()
        errors = threading.Thread(target=_copy_out, args=(channel.recv_stderr, sys.stderr.buffer), daemon=True)
        errors.start()
        _copy_out(channel.recv, sys.stdout.buffer)
        errors.join()
        return channel.recv_exit_status()

    # -- port forwarding ------------------------------------------------------------------------------------
    def forward_local_unix(
        self, local_socket_path: str, remote_socket_path: str, *, remote_command: str | None = None, sudo: bool = True
    ) -> UnixForwarder:
        """Serve ``local_socket_path`` (0600); each client is bridged to ``remote_socket_path`` on the host.

        Each connection runs ``remote_command`` (default: a python3 one-liner that connects to the remote socket and
        copies bytes both ways) over the SSH connection, so no port has to be open on the host. Returns a started
        forwarder; ``close()`` stops it and removes the socket.
        """
        command = remote_command or _unix_bridge_command(remote_socket_path)
        forwarder = UnixForwarder(self, local_socket_path, self.wrap_sudo(command) if sudo else command)
        forwarder.start()
        return forwarder

    def open_tcp(self, host: str, port: int, origin: tuple[str, int] = ("127.0.0.1", 0)) -> paramiko.Channel:
        """A channel to ``host:port`` as the machine sees it (``direct-tcpip``, what ``ssh -L`` uses)."""
        try:
            return self.transport.open_channel("direct-tcpip", (host, port), origin, timeout=self.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise SSHError(f"{self.name} cannot reach {host}:{port}: {_describe(error)}") from None

    def open_unix(self, remote_socket_path: str, *, sudo: bool = True) -> socket.socket:
        """A local socket joined to ``remote_socket_path`` on the machine (through the same bridge program as
        ``forward_local_unix``), for talking HTTP to the runtime with the standard library."""
        command = _unix_bridge_command(remote_socket_path)
        try:
            channel = self.transport.open_session()
            channel.exec_command(self.wrap_sudo(command) if sudo else command)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise SSHError(f"cannot open {remote_socket_path} on {self.name}: {_describe(error)}") from None
        ours, theirs = socket.socketpair()
        threading.Thread(target=bridge, args=(channel, theirs), daemon=True).start()
        return ours

    def request_remote_forward(
        self, remote_port: int, local_host: str, local_port: int, *, remote_host: str = "127.0.0.1"
    ) -> int:
        """Make ``remote_host:remote_port`` on the machine reach ``local_host:local_port`` here; returns the port.

        Pass ``remote_port=0`` to let the host choose. Lives as long as this connection.
        """

        def connect(channel: paramiko.Channel, target: tuple[str, int]) -> None:
            try:
                local = socket.create_connection(target, timeout=10)
            except OSError as error:
                log.debug("remote forward to %s:%s failed: %s", *target, error)
                channel.close()
                return
            local.settimeout(None)
            bridge(channel, local)

        def handler(channel: paramiko.Channel, origin: tuple[str, int], server: tuple[str, int]) -> None:
            # paramiko keeps one handler per transport: route by the forwarded port. Called on the transport's
            # thread, which must keep running: bridge elsewhere.
            target = self._forwards.get(server[1])
            if target is None:
                channel.close()
                return
            threading.Thread(target=connect, args=(channel, target), daemon=True).start()

        if remote_port:
            self._forwards[remote_port] = (local_host, local_port)  # a connection may come before the reply
        try:
            port = self.transport.request_port_forward(remote_host, remote_port, handler=handler)
        except paramiko.SSHException as error:
            raise SSHError(f"{self.name} refused to forward {remote_host}:{remote_port}: {_describe(error)}") from None
        self._forwards[port] = (local_host, local_port)
        return port


class UnixForwarder:
    """A local unix socket whose connections are bridged to the machine by running a command per connection."""

    def __init__(self, connection: Connection, path: str, remote_command: str) -> None:
        self.connection = connection
        self.path = path
        self.remote_command = remote_command
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._server.bind(path)
        finally:
            os.umask(old_umask)
        self._server.listen(64)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"forward {path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def serve_forever(self) -> None:
        """Block until ``close()`` (from another thread or a signal handler)."""
        self._closed.wait()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            channel = self.connection.transport.open_session()
            channel.exec_command(self.remote_command)
        except (paramiko.SSHException, OSError, EOFError, SSHError) as error:
            log.debug("forward to %s failed: %s", self.connection.name, error)
            client.close()
            return
        bridge(channel, client)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> UnixForwarder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _unix_bridge_command(remote_socket_path: str) -> str:
    """A remote python3 program that joins stdin/stdout to a unix socket (python3 is on every provisioned host)."""
    program = (
        "import os,socket,sys,threading\n"
        "s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1])\n"
        "def up():\n"
        " while True:\n"
        "  d=os.read(0,65536)\n"
        "  if not d: break\n"
        "  s.sendall(d)\n"
        " s.shutdown(socket.SHUT_WR)\n"
        "threading.Thread(target=up,daemon=True).start()\n"
        "while True:\n"
        " d=s.recv(65536)\n"
        " if not d: break\n"
        " os.write(1,d)\n"
    )
    return f"python3 -c {shlex.quote(program)} {shlex.quote(remote_socket_path)}"


def bridge(channel: paramiko.Channel, sock: socket.socket) -> None:
    """Copy both ways between an SSH channel and a socket until both sides are done."""

    def upstream() -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            while data := sock.recv(COPY_CHUNK):
                channel.sendall(data)
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            channel.shutdown_write()

    sender = threading.Thread(target=upstream, daemon=True)
    sender.start()
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        while data := channel.recv(COPY_CHUNK):
            sock.sendall(data)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    sender.join()
    channel.close()
    sock.close()


def _read_all(receive: Callable[[int], bytes]) -> bytes:
    chunks = []
    while chunk := receive(COPY_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def _collect(receive: Callable[[int], bytes], into: list[bytes]) -> None:
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        into.append(_read_all(receive))


def _copy_out(receive: Callable[[int], bytes], out: IO[bytes]) -> None:
    while chunk := receive(COPY_CHUNK):
        out.write(chunk)
        out.flush()


def _feed(stdin: IO[bytes], channel: paramiko.Channel) -> None:
    """Copy ``stdin`` to the command. A real file is read with ``os.read`` on its descriptor: this thread is a daemon
    still blocked in a read when the command ends, and a buffered reader's lock held at interpreter exit aborts the
    process ("could not acquire lock for <_io.BufferedReader name='<stdin>'>")."""
    try:
        fd = stdin.fileno()
    except (OSError, ValueError, AttributeError):  # an in-memory stream
        fd = -1

    def chunk() -> bytes:
        if fd >= 0:
            return os.read(fd, COPY_CHUNK)
        return stdin.read1(COPY_CHUNK) if hasattr(stdin, "read1") else stdin.read(COPY_CHUNK)

    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        while data := chunk():
            channel.sendall(data)
        channel.shutdown_write()


def _pump_terminal(channel: paramiko.Channel, stdin_fd: int, stdout_fd: int) -> None:
    while True:
        watched: list[Any] = [channel, stdin_fd]  # a paramiko channel and a file descriptor
        readable, _, _ = select.select(watched, [], [])
        if channel in readable:
            data = channel.recv(COPY_CHUNK)
            if not data:
                return
            os.write(stdout_fd, data)
        if stdin_fd in readable:
            data = os.read(stdin_fd, COPY_CHUNK)
            if not data:
                channel.shutdown_write()
            else:
                channel.sendall(data)


def _describe(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def wait_for_ssh(
    details: SSHDetails,
    host_key: str | None,
    *,
    timeout: float,
    name: str | None = None,
    interval: float = 0.2,
) -> Connection:
    """Connect as soon as the host answers and ``exit 0`` runs; retries until ``timeout`` seconds have passed.

    A host-key mismatch fails at once (retrying would not make it trustworthy). On timeout the error says what was
    awaited: address, port, user and the last error seen.
    """
    deadline = time.monotonic() + timeout
    last_error = "no attempt finished"
    while True:
        remaining = deadline - time.monotonic()
        connection = Connection(details, host_key, name=name, connect_timeout=max(1.0, min(10.0, remaining)))
        try:
            connection.connect()
            connection.run("exit 0", timeout=max(1.0, min(10.0, remaining)))
            return connection
        except HostKeyMismatchError:
            connection.close()
            raise
        except (SSHError, MachineTimeoutError) as error:
            connection.close()
            last_error = str(error)
        if time.monotonic() + interval >= deadline:
            raise MachineTimeoutError(
                f"timed out after {timeout:g}s waiting for SSH on {details.host} port {details.port} as user "
                f"{details.user}; last error: {last_error}"
            )
        time.sleep(interval)
        interval = min(interval * 1.5, 2.0)
