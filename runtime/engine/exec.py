"""Exec instances (moby's daemon/exec.go): create, start, inspect and resize processes joined to a running
container's namespaces, cgroup and root."""
from __future__ import annotations

import os
import secrets
import socket
import threading
from typing import Callable

from machines.runtime.engine.config import merge_env
from machines.runtime.engine.container import Container, ContainerTable
from machines.runtime.engine.launch import Launcher, LaunchReport, start_error
from machines.runtime.engine.sessions import ExecSession
from machines.runtime.errors import Conflict, HostError, InvalidParameter, NotFound
from machines.runtime.linux import safepath, syscalls
from machines.runtime.linux.process import StartError, receive_console, resolve_user

SpecFor = Callable[[Container, str], dict]


class ExecManager:
    """Every exec instance by id (records in Docker's ExecInspect shape plus private ``_`` keys)."""

    def __init__(self, table: ContainerTable, launcher: Launcher, spec_for: SpecFor) -> None:
        self._table = table
        self._launcher = launcher  # forks the helper that joins the container
        self._spec_for = spec_for  # the container's own process spec, which an exec starts from
        self._execs: dict[str, dict] = {}

    def create(self, ref: str, body: dict) -> str:
        c = self._table.get(ref)
        if not c.running:
            raise Conflict(f"Container {c.id} is not running")
        if c.state.get("Paused"):
            raise Conflict(f"Container {c.id} is paused, unpause the container before exec")
        cmd = body.get("Cmd") or []
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd:
            raise InvalidParameter("No exec command specified")
        if body.get("User"):  # as dockerd: an unknown user fails the create, not the start
            _check_user(c, str(body["User"]))
        eid = secrets.token_hex(32)
        with self._table.lock:
            self._execs[eid] = {
                "ID": eid, "Running": False, "ExitCode": None, "Pid": 0, "ContainerID": c.id,
                "ProcessConfig": {"entrypoint": cmd[0], "arguments": list(cmd[1:]), "tty": bool(body.get("Tty")),
                                  "user": body.get("User") or "", "privileged": bool(body.get("Privileged"))},
                "OpenStdin": bool(body.get("AttachStdin")), "OpenStdout": bool(body.get("AttachStdout", True)),
                "OpenStderr": bool(body.get("AttachStderr", True)), "CanRemove": False,
                "DetachKeys": body.get("DetachKeys") or "", "_body": dict(body), "_master": None,
                "_started": False,
            }
        self._table.emit(c, "exec_create: " + " ".join(cmd), execID=eid)
        return eid

    def _get(self, exec_id: str) -> dict:
        with self._table.lock:
            rec = self._execs.get(exec_id)
        if rec is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return rec

    def inspect(self, exec_id: str) -> dict:
        rec = self._get(exec_id)
        return {k: v for k, v in rec.items() if not k.startswith("_")}

    def start(self, exec_id: str, *, detach: bool = False, tty: bool = False) -> ExecSession | None:
        rec = self._get(exec_id)
        with self._table.lock:
            if rec["_started"]:
                raise Conflict(f"Error: Exec command {exec_id} has already run")
            rec["_started"] = True
        c = self._table.get(rec["ContainerID"])
        if not c.running:
            raise Conflict(f"Container {c.id} is not running")
        body = rec["_body"]
        tty = bool(body.get("Tty")) or tty
        cfg = c.data["Config"]
        spec = self._spec_for(c, "join")
        if body.get("Privileged"):
            spec.update({"caps": None, "seccomp": False})
        spec.update({"tty": tty, "args": list(body["Cmd"]) if not isinstance(body["Cmd"], str) else [body["Cmd"]],
                     "env": merge_env(c.data.get("_link_env", []) + (cfg.get("Env") or []), body.get("Env") or []),
                     "user": body.get("User") or cfg.get("User") or "",
                     "cwd": body.get("WorkingDir") or cfg.get("WorkingDir") or "/", "init": False})
        keep_open: dict[int, int] = {}
        child_side: list[int] = []
        stdin_fd = master = None
        stdio: tuple[int, int, int] | None = None
        console = child_console = None
        if tty:
            console, child_console = socket.socketpair()
        else:
            null = os.open(os.devnull, os.O_RDWR)
            child_side.append(null)
            in_r = null
            if rec["OpenStdin"] and not detach:
                in_r, stdin_fd = os.pipe()
                child_side.append(in_r)
            outs = []
            for kind in (1, 2):
                if detach:
                    outs.append(null)
                    continue
                r, w = os.pipe()
                keep_open[r] = kind
                child_side.append(w)
                outs.append(w)
            stdio = (in_r, outs[0], outs[1])
        report_r, report_w = os.pipe()
        status_r, status_w = os.pipe()
        fds = {"report": report_w, "status": status_w}
        if stdio is not None:
            fds.update(stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
        if child_console is not None:
            fds["console"] = child_console.fileno()
        try:
            self._launcher.run("exec", spec, fds, target=c.state["Pid"])
        except OSError as e:
            for fd in [report_r, status_r, *keep_open] + ([stdin_fd] if stdin_fd is not None else []):
                os.close(fd)
            if console is not None:
                console.close()
            raise HostError(f"cannot start the exec's helper: {e}") from None
        finally:
            for fd in [report_w, status_w, *child_side]:
                os.close(fd)
            if child_console is not None:
                child_console.close()
        if console is not None:
            master = receive_console(console)
            size = body.get("ConsoleSize") or [0, 0]
            if master is not None and size and all(size):
                syscalls.set_winsize(master, int(size[0]), int(size[1]))
            if master is not None and detach:
                os.close(master)
                master = None
            if master is not None:
                keep_open = {master: 1}
                stdin_fd = master if rec["OpenStdin"] else None
        done = threading.Event()
        report = LaunchReport(report_r)
        error = report.read_to_end()
        with self._table.lock:
            rec.update({"Running": error is None, "Pid": report.pid, "_master": master})

        def reap() -> None:
            with os.fdopen(status_r, "rb") as status:
                written = status.read()  # the helper writes the code, then exits; nothing: it was killed
            code = int(written) if written.isdigit() else 255
            with self._table.lock:
                rec.update({"Running": False, "ExitCode": code, "_master": None})
            self._table.emit(c, "exec_die", execID=exec_id, exitCode=str(code))
            done.set()

        self._table.emit(c, "exec_start: " + " ".join(spec["args"]), execID=exec_id)
        threading.Thread(target=reap, name="exec-" + exec_id[:12], daemon=True).start()
        if error is not None:
            done.wait()
            for fd in list(keep_open) + ([stdin_fd] if stdin_fd is not None and stdin_fd != master else []):
                os.close(fd)
            if master is not None and master not in keep_open:
                os.close(master)
            raise start_error(f"OCI runtime exec failed: exec failed: unable to start container process: {error}")
        if detach:
            return None
        return ExecSession(keep_open, stdin_fd, tty, done)

    def resize(self, exec_id: str, h: int, w: int) -> None:
        rec = self._get(exec_id)
        master = rec.get("_master")
        if master is None:
            if not rec["Running"]:
                raise Conflict(f"Exec {exec_id} is not running")
            return
        syscalls.set_winsize(master, int(h), int(w))

    def discard(self, exec_id: str) -> None:
        """Forgets a finished exec the daemon ran for itself (a health probe), as moby drops its probes."""
        with self._table.lock:
            self._execs.pop(exec_id, None)

    def ids_of(self, cid: str) -> list[str]:
        with self._table.lock:
            return [eid for eid, rec in self._execs.items() if rec["ContainerID"] == cid]

    def container_exited(self, cid: str) -> None:
        """The container's processes are gone, its execs with them."""
        with self._table.lock:
            for rec in self._execs.values():
                if rec["ContainerID"] == cid and rec["Running"]:
                    rec["Running"] = False

    def forget_container(self, cid: str) -> None:
        with self._table.lock:
            for eid in [e for e, rec in self._execs.items() if rec["ContainerID"] == cid]:
                self._execs.pop(eid, None)



def _check_user(c: Container, user: str) -> None:
    """Resolves ``user`` with the container's own passwd and group files, opened inside its root (a link there
    cannot point the lookup at the host's files); refused with dockerd's words and its 400."""
    fds: list[int] = []
    with safepath.Root(f"/proc/{c.state['Pid']}/root") as root:
        paths = []
        for name in ("/etc/passwd", "/etc/group"):
            try:
                fds.append(root.open(name))
                paths.append(safepath.fd_path(fds[-1]))
            except OSError:
                paths.append(os.devnull + "/missing")  # absent or unresolvable: no entries, as an empty file
    try:
        resolve_user(user, paths[0], paths[1])
    except StartError as exc:
        raise InvalidParameter(str(exc)) from None
    finally:
        for fd in fds:
            os.close(fd)
