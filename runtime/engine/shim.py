"""The per-container monitor ("shim"): a process forked from the daemon that owns the container's stdio.

It outlives the daemon, so a daemon killed with SIGKILL loses nothing: the shim keeps reading the container's
output into ``<id>-json.log``, serves attach/resize over a unix socket, and records the exit code, OOM kill and
finish time in ``exit.json`` when the container ends. The daemon talks to it with the small framed protocol below.

Protocol: the client sends one JSON line, ``{"attach": {"stdin","stdout","stderr"}}``, ``{"resize": [h, w]}`` or
``{"monitor": true}``. Then frames ``[kind:1][length:4 big-endian][payload]`` flow: to the client kind 1/2 output
and kind 9 the exit record (JSON); from the client kind 0 stdin data and kind 3 "close stdin".
"""
from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import socket
import struct
import threading

from machines.runtime import timefmt
from machines.runtime.linux import syscalls as sc
from machines.runtime.linux.cgroups import open_cgroup
from machines.runtime.linux.process import container_child, exit_code, receive_console

FRAME = struct.Struct(">BI")
STDIN, STDOUT, STDERR, CLOSE_STDIN, EXIT = 0, 1, 2, 3, 9
STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}
PARTIAL_LIMIT = 16 * 1024


def write_json(path: str, data: dict) -> None:
    """Atomic replace, so a reader (or a daemon killed mid-write) never sees half a file."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def close_fds(keep: list[int]) -> None:
    """A forked shim holds only its own descriptors: no other start's pipes (they would never see EOF)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def send_frame(sock: socket.socket, kind: int, data: bytes) -> None:
    sock.sendall(FRAME.pack(kind, len(data)) + data)


def recv_exact(sock: socket.socket, size: int) -> bytes | None:
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    header = recv_exact(sock, FRAME.size)
    if header is None:
        return None
    kind, size = FRAME.unpack(header)
    data = recv_exact(sock, size) if size else b""
    return None if data is None else (kind, data)


def connect(path: str, request: dict, timeout: float | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    sock.settimeout(None)
    sock.sendall(json.dumps(request).encode() + b"\n")
    return sock


class _Client:
    def __init__(self, sock: socket.socket, streams: set, stdin: bool) -> None:
        self.sock = sock
        self.streams = streams
        self.stdin = stdin
        self.buf = b""


class Shim:
    """The monitor loop. Lives in its own session; exits once the container has exited and its output is drained."""

    def __init__(self, spec: dict, stdin_fd: int | None, outputs: dict[int, int], master: int | None,
                 listener: socket.socket, child: int) -> None:
        self.spec = spec
        self.stdin_fd = stdin_fd
        self.outputs = outputs  # fd -> stream kind
        self.master = master
        self.listener = listener
        self.child = child
        self.clients: list[_Client] = []
        self.partial: dict[int, bytes] = {}
        self.log = open(spec["log_path"], "ab", buffering=0)
        self.log_size = self.log.tell()
        self.sel = selectors.DefaultSelector()
        self.status: int | None = None

    def run(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        for fd in self.outputs:
            self.sel.register(fd, selectors.EVENT_READ, "output")
        self._reap()
        while self.status is None or self.outputs:
            timeout = None if self.status is None else 2.0
            events = self.sel.select(timeout)
            if not events and self.status is not None:
                break  # exited, but something outside the PID namespace still holds the output open
            for key, _ in events:
                if key.data == "wake":
                    os.read(wake_r, 512)
                    self._reap()
                elif key.data == "accept":
                    self._accept()
                elif key.data == "output":
                    self._read_output(key.fd)
                else:
                    self._read_client(key.data)
        self._finish()

    def _reap(self) -> None:
        if self.status is not None:
            return
        try:
            pid, status = os.waitpid(self.child, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.child, 255 << 8
        if pid == self.child:
            self.status = exit_code(status)

    def _accept_waiting(self) -> None:
        """Attach clients connect before the process starts, but select may report output first: take every
        waiting client before forwarding output, so ``docker run`` never misses the first bytes."""
        while self._accept():
            pass

    def _read_output(self, fd: int) -> None:
        self._accept_waiting()
        try:
            data = os.read(fd, 65536)
        except OSError as e:
            if e.errno != errno.EIO:  # EIO: the last holder of the pty slave closed it
                raise
            data = b""
        kind = self.outputs[fd]
        if not data:
            self.sel.unregister(fd)
            del self.outputs[fd]
            self._log(kind, b"", final=True)
            if fd != self.master:
                os.close(fd)
            return
        self._log(kind, data)
        for client in list(self.clients):
            if kind in client.streams:
                try:
                    send_frame(client.sock, kind, data)
                except OSError:
                    self._drop(client)

    def _log(self, kind: int, data: bytes, final: bool = False) -> None:
        """json-file lines as moby writes them: one entry per line, long partial lines cut at 16 KiB."""
        buf = self.partial.get(kind, b"") + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        out = []
        stamp = timefmt.rfc3339_nano()
        for line in lines:
            out.append(self._entry(line + b"\n", kind, stamp))
        while len(rest) >= PARTIAL_LIMIT or (final and rest):
            out.append(self._entry(rest[:PARTIAL_LIMIT], kind, stamp))
            rest = rest[PARTIAL_LIMIT:]
        self.partial[kind] = rest
        limit = self.spec.get("log_max_size") or 0
        batch: list[bytes] = []
        batch_size = 0
        for entry in out:  # rotate between entries, as moby does, however much one read brought
            if limit and self.log_size + batch_size + len(entry) > limit and self.log_size + batch_size:
                self._write(batch)
                self._rotate()
                batch, batch_size = [], 0
            batch.append(entry)
            batch_size += len(entry)
        self._write(batch)

    def _write(self, entries: list[bytes]) -> None:
        if entries:
            data = b"".join(entries)
            self.log.write(data)
            self.log_size += len(data)

    def _rotate(self) -> None:
        """json-file's max-size/max-file: ``<log>.1`` is the newest old file; one file means truncation."""
        path = self.spec["log_path"]
        keep = max(int(self.spec.get("log_max_file") or 1), 1)
        self.log.close()
        if keep == 1:
            os.unlink(path)
        else:
            for index in range(keep - 1, 0, -1):
                source = path if index == 1 else f"{path}.{index - 1}"
                if os.path.exists(source):
                    os.replace(source, f"{path}.{index}")
        self.log = open(path, "ab", buffering=0)
        self.log_size = 0

    @staticmethod
    def _entry(line: bytes, kind: int, stamp: str) -> bytes:
        text = line.decode("utf-8", "surrogateescape")
        return (json.dumps({"log": text, "stream": STREAM_NAMES[kind], "time": stamp}) + "\n").encode()

    def _accept(self) -> bool:
        """Takes one waiting client; False when none waits. The listener is non-blocking: a readiness reported in
        the round that ``_accept_waiting`` already took the client from is stale, and a blocking accept would
        stall the whole shim (output, stdin, the container's exit) until someone else connected."""
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return False
        sock.settimeout(2.0)
        try:
            line = b""
            while not line.endswith(b"\n"):
                chunk = sock.recv(1)
                if not chunk:
                    raise OSError("closed")
                line += chunk
            request = json.loads(line)
        except (OSError, ValueError):
            sock.close()
            return True
        sock.settimeout(None)
        if "resize" in request:
            if self.master is not None:
                sc.set_winsize(self.master, *request["resize"])
            sock.close()
            return True
        opts = request.get("attach") or {}
        streams = {k for k, name in STREAM_NAMES.items() if opts.get(name)}
        client = _Client(sock, streams, bool(opts.get("stdin")) and self.stdin_fd is not None)
        self.clients.append(client)
        self.sel.register(sock, selectors.EVENT_READ, client)
        return True

    def _read_client(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.buf += data
        while len(client.buf) >= FRAME.size:
            kind, size = FRAME.unpack(client.buf[:FRAME.size])
            if len(client.buf) < FRAME.size + size:
                break
            payload = client.buf[FRAME.size:FRAME.size + size]
            client.buf = client.buf[FRAME.size + size:]
            if client.stdin and kind == STDIN:
                self._write_stdin(payload)
            elif client.stdin and kind == CLOSE_STDIN and self.spec.get("stdin_once"):
                self._close_stdin()

    def _write_stdin(self, data: bytes) -> None:
        if self.stdin_fd is None:
            return
        try:
            os.write(self.stdin_fd, data)
        except OSError:
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self.stdin_fd is not None and self.stdin_fd != self.master:
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def _drop(self, client: _Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
            try:
                self.sel.unregister(client.sock)
            except (KeyError, ValueError):
                pass
            client.sock.close()

    def _finish(self) -> None:
        for kind in list(self.partial):
            self._log(kind, b"", final=True)
        try:
            oom = open_cgroup(self.spec["cgroup"]).oom_kills() > 0
        except OSError:
            oom = False
        record = {"ExitCode": self.status, "OOMKilled": oom, "FinishedAt": timefmt.rfc3339_nano(), "Pid": self.child,
                  "StartId": self.spec["start_id"]}
        write_json(self.spec["exit_path"], record)
        payload = json.dumps(record).encode()
        for client in list(self.clients):
            try:
                send_frame(client.sock, EXIT, payload)
            except OSError:
                pass
            client.sock.close()
        try:
            os.unlink(self.spec["socket"])
        except OSError:
            pass


def _listen(path: str) -> socket.socket:
    """The monitor's socket (attach, resize, the daemon's exit watch), non-blocking as ``Shim._accept`` wants."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.setblocking(False)
    return listener


def shim_main(spec: dict, report_fd: int, go_fd: int, netns_fd: int | None) -> None:
    """Body of the forked shim: make the stdio, fork the container (PID 1 of a new PID namespace), then monitor."""
    os.setsid()
    close_fds([report_fd, go_fd] + ([netns_fd] if netns_fd is not None else []))
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    sc.set_process_title("machines-shim " + spec["id"], "shim-" + spec["id"][:10])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    master = stdin_fd = console = None
    if spec["tty"]:
        console, child_console = socket.socketpair()
        child_stdio = None
        outputs: dict[int, int] = {}
        inherited: list[int] = []
    else:
        child_console = None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if spec["open_stdin"]:
            in_r, stdin_fd = os.pipe()
        else:
            in_r = os.open(os.devnull, os.O_RDONLY)
        child_stdio = (in_r, out_w, err_w)
        outputs = {out_r: STDOUT, err_r: STDERR}
        inherited = [in_r, out_w, err_w]
    if not spec.get("pid_host"):
        sc.unshare(sc.CLONE_NEWPID)
    child = os.fork()  # first: the child's namespaces and mounts are the long part of a start; the rest overlaps
    if child == 0:
        if console is not None:
            console.close()
        container_child(spec, child_stdio, report_fd, go_fd, netns_fd, child_console)
    for fd in inherited + [go_fd] + ([netns_fd] if netns_fd is not None else []):
        os.close(fd)
    try:
        listener = _listen(spec["socket"])
    except OSError as e:
        os.write(report_fd, (f"err:cannot listen on the container's monitor socket: {e}\n").encode())
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        return
    try:  # joining a v1 hierarchy can wait for an RCU grace period: overlap it with the child's mounts
        open_cgroup(spec["cgroup"]).join(child)
    except OSError as e:
        os.write(report_fd, (f"err:cannot join the container's cgroup: {e}\n").encode())
        os.kill(child, signal.SIGKILL)
    os.write(report_fd, b"pid:%d\n" % child)
    os.close(report_fd)
    if console is not None and child_console is not None:
        child_console.close()
        master = receive_console(console)
        if master is not None:
            height, width = spec.get("console") or (24, 80)
            sc.set_winsize(master, height or 24, width or 80)
            outputs[master] = STDOUT
            stdin_fd = master if spec["open_stdin"] else None
    Shim(spec, stdin_fd, outputs, master, listener, child).run()
