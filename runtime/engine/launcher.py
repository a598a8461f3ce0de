"""The launcher (a "zygote"): a small Python process the daemon starts once, which forks every container's monitor
and every exec's helper.

A monitor forked from the daemon carried the daemon's whole heap (26 MiB of RSS each) and its fork was the
slowest step of a start. This process imports only what a monitor and a container's set-up need (no API, images
or network code), so what it forks is a third of that and quick to copy. The daemon sends each request as JSON (what
to run, the spec, the names of the descriptors) with its pipes and sockets (``SCM_RIGHTS``) over a unix socket; the
launcher forks, answers the child's pid, and the child runs ``shim_main`` (a container start) or ``enter_child`` (an
exec, which writes its command's exit code to a pipe, as the daemon cannot wait for it). The launcher ignores
SIGCHLD, so the kernel reaps what it forked; it exits when the daemon's end of the socket closes (stopped or
killed), and the monitors live on in their own sessions, as before.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

from machines.runtime.engine.shim import recv_exact, shim_main
from machines.runtime.linux import cgroups
from machines.runtime.linux import syscalls as sc
from machines.runtime.linux.process import enter_child

HEADER = struct.Struct(">I")
PID = struct.Struct(">i")
MAX_FDS = 6  # an exec's stdin, stdout, stderr, report and status pipes and console socket
# Run with -I -S: no site-packages, no PYTHON* variables, nothing the daemon's own path did not choose. The code is
# long enough on purpose: a monitor's title ("machines-shim <64 hex>") is written over this command line.
BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
        "from machines.runtime.engine.launcher import serve; serve(int(sys.argv[2]))")


def package_root() -> str:
    """The ``sys.path`` entry holding the ``machines`` package this code runs from (a folder or the zipapp), found
    from the top package rather than this file: an editable install may map the subpackages elsewhere."""
    return os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["machines"].__file__ or "")))


def _receive(sock: socket.socket) -> tuple[dict, list[int]] | None:
    """One request and the descriptors that came with its first bytes; None at end of file."""
    data, fds, _, _ = socket.recv_fds(sock, 65536, MAX_FDS)
    for fd in fds:  # close-on-exec, as they were in the daemon: the report pipe's end of file tells it of the exec
        os.set_inheritable(fd, False)
    while len(data) < HEADER.size:
        if not data and not fds:
            return None
        more = sock.recv(HEADER.size - len(data))
        if not more:
            return None
        data += more
    size = HEADER.unpack(data[:HEADER.size])[0]
    rest = recv_exact(sock, HEADER.size + size - len(data))
    if rest is None:
        return None
    return json.loads(data[HEADER.size:] + rest), fds


def _run(request: dict, fds: dict[str, int]) -> None:
    """The forked child's work: a container's monitor, or an exec's helper."""
    spec = request["spec"]
    if request["run"] == "shim":
        shim_main(spec, fds["report"], fds["go"], fds.get("netns"))
        return
    console = socket.socket(fileno=fds["console"]) if "console" in fds else None
    stdio = (fds["stdin"], fds["stdout"], fds["stderr"]) if "stdin" in fds else None
    enter_child(request["target"], spec, stdio, fds["report"], fds["status"], console)


def serve(fd: int) -> None:
    """The launcher's loop: one fork per start, until the daemon's end closes."""
    sock = socket.socket(fileno=fd)
    sc.set_process_title("machines-launcher", "machines-launch")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the monitors
    cgroups.layout()  # read before any fork: the container child must not parse mountinfo after pivot_root
    while True:
        try:
            received = _receive(sock)
        except (OSError, ValueError):
            received = None
        if received is None:
            return
        request, fds = received
        try:
            pid = os.fork()
        except OSError as e:
            pid = -(e.errno or 1)
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the monitor waits for its container
                sock.close()
                _run(request, dict(zip(request["fds"], fds)))
            finally:
                os._exit(0)
        for received_fd in fds:
            os.close(received_fd)
        sock.sendall(PID.pack(pid))
