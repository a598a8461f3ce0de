"""What runs in a freshly forked process to become a container (or to join one for exec).

The code runs after ``fork`` and before ``exec``: it must not start threads or import anything new (after
pivot_root the host's Python library is out of reach), and it reports failure as one line on ``report_fd``
(moby's wording, which the docker CLI maps to exit codes 126/127) before exiting.
"""
from __future__ import annotations

import os
import posixpath
import resource
import signal
import socket
import stat

from machines.runtime.linux import safepath, seccomp
from machines.runtime.linux import syscalls as sc
from machines.runtime.linux.cgroups import controls_devices, open_cgroup

TYPE_CHECKING = False  # typing's flag without importing typing: the launcher, and every monitor, would carry it
if TYPE_CHECKING:
    from typing import NoReturn

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
MASKED = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap")
READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


class StartError(Exception):
    """A failure before exec, with the exit code Docker gives it (127 not found, 126 not executable)."""

    def __init__(self, message: str, code: int = 127) -> None:
        super().__init__(message)
        self.code = code


def report(fd: int, kind: str, text: str = "") -> None:
    os.write(fd, ("{}:{}\n".format(kind, text.replace("\n", " "))).encode())


def reset_signals() -> None:
    """Python ignores SIGPIPE and handles SIGINT; exec keeps ignored signals, so a container would inherit that."""
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def setup_stdio(stdio: tuple[int, int, int], tty: bool) -> None:
    os.setsid()
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    if tty:
        sc.set_controlling_tty(0)


def open_console(console: socket.socket) -> tuple[int, int, int]:
    """A pty from the container's own devpts (so ``tty`` names it inside); the master goes to the shim/daemon."""
    master, slave = os.openpty()
    socket.send_fds(console, [b"m"], [master])
    os.close(master)
    console.close()
    return slave, slave, slave


def receive_console(console: socket.socket) -> int | None:
    """The master end sent by ``open_console``; None if the child died first."""
    try:
        _, fds, _, _ = socket.recv_fds(console, 16, 1)
    except OSError:
        fds = []
    console.close()
    return fds[0] if fds else None


def _mount_dev(root: safepath.Root, tty: bool, shm_size: int) -> None:
    _mount_at(root, "/dev", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    fd = root.open("/dev", os.O_PATH | os.O_DIRECTORY)  # the fresh tmpfs: only we write in it
    dev = safepath.fd_path(fd)
    for name, major, minor in DEVICES:
        os.mknod(os.path.join(dev, name), 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(os.path.join(dev, name), 0o666)
    for sub in ("pts", "shm", "mqueue"):
        os.mkdir(os.path.join(dev, sub), 0o755)
    sc.mount("devpts", os.path.join(dev, "pts"), "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620,gid=5")
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    sc.mount("shm", os.path.join(dev, "shm"), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
             f"mode=1777,size={shm_size}")
    try:
        sc.mount("mqueue", os.path.join(dev, "mqueue"), "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    except OSError:
        pass  # optional: some kernels lack POSIX message queues
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore")):
        os.symlink(target, os.path.join(dev, name))
    if tty:
        open(os.path.join(dev, "console"), "w").close()
    os.close(fd)


def _mount_at(root: safepath.Root, target: str, source: str | None, fstype: str | None, flags: int = 0,
              data: str | None = None, directory: bool = True) -> None:
    """mount(2) onto ``target`` resolved inside the root and named by its fd, so that a link swapped in by
    anyone sharing a volume cannot move the mount elsewhere (the runc CVE-2021-30465 class)."""
    fd = root.mount_point(target, directory)
    try:
        sc.mount(source, safepath.fd_path(fd), fstype, flags, data)
    finally:
        os.close(fd)


PROPAGATION_FLAGS = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC, "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC, "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
}
TMPFS_FLAGS = {  # mount(8) words that are flags, not tmpfs data: (set, clear)
    "ro": (sc.MS_RDONLY, 0), "rw": (0, sc.MS_RDONLY), "nosuid": (sc.MS_NOSUID, 0), "suid": (0, sc.MS_NOSUID),
    "nodev": (sc.MS_NODEV, 0), "dev": (0, sc.MS_NODEV), "noexec": (sc.MS_NOEXEC, 0), "exec": (0, sc.MS_NOEXEC),
    "sync": (sc.MS_SYNCHRONOUS, 0), "async": (0, sc.MS_SYNCHRONOUS), "noatime": (sc.MS_NOATIME, 0),
    "atime": (0, sc.MS_NOATIME), "nodiratime": (sc.MS_NODIRATIME, 0), "diratime": (0, sc.MS_NODIRATIME),
    "strictatime": (sc.MS_STRICTATIME, 0),
}


def tmpfs_flags(options: str, readonly: bool) -> tuple[int, str]:
    """(mount flags, data) of a tmpfs: Docker's defaults noexec, nosuid, nodev, then the options in order."""
    flags = sc.MS_NOEXEC | sc.MS_NOSUID | sc.MS_NODEV | (sc.MS_RDONLY if readonly else 0)
    data = []
    for word in filter(None, (options or "").split(",")):
        if word in TMPFS_FLAGS:
            on, off = TMPFS_FLAGS[word]
            flags = (flags | on) & ~off
        elif word not in PROPAGATION_FLAGS:
            data.append(word)
    return flags, ",".join(data)


def mount_of(path: str) -> tuple[str, list[str]]:
    """(mount point, optional fields such as ``shared:3``) of the mount holding ``path``, from mountinfo."""
    path = os.path.realpath(path)
    best: tuple[str, list[str]] = ("/", [])
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            optional = fields[6:fields.index("-")]
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
                best = (point, optional)
    return best


def propagation_problem(source: str, propagation: str) -> str | None:
    """dockerd's ensureShared/ensureSharedOrSlave: a shared (slave) bind needs a shared (or slave) source mount."""
    if propagation not in ("shared", "rshared", "slave", "rslave"):
        return None
    point, optional = mount_of(source)
    if any(field.startswith("shared:") for field in optional):
        return None
    if propagation.endswith("shared"):
        return f"path {source} is mounted on {point} but it is not a shared mount"
    if any(field.startswith("master:") for field in optional):
        return None
    return f"path {source} is mounted on {point} but it is not a shared or slave mount"


def bind_mount(source: str, root: safepath.Root, target: str, readonly: bool, recursive: bool = True,
               propagation: str = "") -> None:
    """``source`` bind-mounted on ``target`` inside the root (read-only and with a propagation if asked)."""
    _mount_at(root, target, source, None, sc.MS_BIND | (sc.MS_REC if recursive else 0),
              directory=os.path.isdir(source))
    if readonly or propagation:  # these need the new mount itself: looked up again, through it
        fd = root.open(target, os.O_PATH)
        try:
            if propagation:
                sc.mount(None, safepath.fd_path(fd), None, PROPAGATION_FLAGS[propagation])
            if readonly:
                sc.mount(None, safepath.fd_path(fd), None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)
        finally:
            os.close(fd)


def seed_volume(volume: str, root: safepath.Root, target: str) -> None:
    """An empty volume starts with the image's content at its mount point, as with Docker: owners, modes, times and
    symlinks, and its root gets the owner and mode of the image's folder (so ``-u postgres`` can write in it)."""
    try:
        image_dir = root.open(target, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        dest = os.open(volume, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if os.listdir(dest):
                return
            safepath.copy_tree(image_dir, dest)
            st = os.fstat(image_dir)
            os.fchown(dest, st.st_uid, st.st_gid)
            os.fchmod(dest, stat.S_IMODE(st.st_mode))
        finally:
            os.close(dest)
    finally:
        os.close(image_dir)


def _mask(privileged: bool) -> None:
    if privileged:
        return
    for path in MASKED:
        try:
            if os.path.isdir(path):
                sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY)
            elif os.path.exists(path):
                sc.mount("/dev/null", path, None, sc.MS_BIND)
        except OSError:
            pass
    for path in READONLY:
        try:
            sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
            sc.mount(None, path, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)
        except OSError:
            pass


def prepare_root(spec: dict) -> None:
    """Mounts the container's filesystem tree and pivots into it. Runs in the new mount namespace."""
    rootfs = spec["rootfs"]
    # Like runc with the rootfs propagation dockerd picks: shared when a bind is shared, slave when one is a slave
    # (mounts then keep their tie to the host's), else private; the mount holding the root filesystem is made
    # private either way, so the container's own mounts never appear on the host and pivot_root is allowed.
    wanted = {m.get("propagation", "").lstrip("r") for m in spec["mounts"]}
    propagation = "shared" if "shared" in wanted else "slave" if "slave" in wanted else "private"
    sc.mount(None, "/", None, sc.MS_REC | PROPAGATION_FLAGS[propagation])
    if propagation == "shared":
        sc.mount(None, mount_of(os.path.dirname(rootfs))[0], None, sc.MS_PRIVATE)
    lower = ":".join(spec["lower"])
    # Image layers may hold device nodes (``docker import`` of a debootstrap tree). Without a devices cgroup to
    # deny them, the root is nodev so a node from an image cannot reach a host device; /dev is its own tmpfs.
    guard = not spec["privileged"] and not spec.get("devices") and not controls_devices()
    sc.mount("overlay", rootfs, "overlay", sc.MS_NODEV if guard else 0,
             f"lowerdir={lower},upperdir={spec['upper']},workdir={spec['work']}")
    root = safepath.Root(rootfs)  # the overlay: every mount point below is resolved inside it
    _mount_at(root, "/proc", "proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    for key, value in (spec.get("sysctls") or {}).items():  # namespaced ones only, before /proc/sys turns ro
        fd = root.open("/proc/sys/" + key.replace(".", "/"), os.O_WRONLY)
        with os.fdopen(fd, "w") as f:
            f.write(str(value))
    _mount_dev(root, spec["tty"], spec.get("shm_size") or 67108864)
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | (0 if spec["privileged"] else sc.MS_RDONLY)
    try:
        _mount_at(root, "/sys", "sysfs", "sysfs", flags)
    except OSError:  # sysfs of another network namespace cannot be mounted here: show the host's, read-only
        bind_mount("/sys", root, "/sys", True)
    for name, source in spec["etc"].items():
        bind_mount(source, root, "/etc/" + name, False, recursive=False)
    for dev in spec.get("devices") or []:  # --device: the node itself; the devices cgroup allows its use
        parent = root.makedirs(posixpath.dirname(dev["path"]))
        name = posixpath.basename(dev["path"])
        try:
            safepath.clear(parent, name)
            os.mknod(name, 0o666 | (stat.S_IFBLK if dev["type"] == "b" else stat.S_IFCHR),
                     os.makedev(dev["major"], dev["minor"]), dir_fd=parent)
        finally:
            os.close(parent)
    for m in spec["mounts"]:
        if m["type"] == "tmpfs":
            _mount_at(root, m["target"], "tmpfs", "tmpfs", *tmpfs_flags(m.get("options") or "mode=1777",
                                                                       m["readonly"]))
            continue
        if m.get("copy_up"):
            seed_volume(m["source"], root, m["target"])
        bind_mount(m["source"], root, m["target"], m["readonly"], propagation=m.get("propagation", ""))
    os.close(root.makedirs(spec.get("cwd") or "/"))  # WorkingDir exists even when the root turns read-only
    root.close()
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY)
    os.chdir(rootfs)
    sc.pivot_root(".", ".")
    os.fchdir(old_root)  # as runc: "." is then surely the old root, made a slave so its unmounts stay here
    os.close(old_root)
    sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")
    _mask(spec["privileged"])
    if spec.get("readonly_rootfs"):
        sc.mount(None, "/", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)


def _entries(path: str) -> list[list[str]]:
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def resolve_user(user: str, passwd: str = "/etc/passwd", group: str = "/etc/group") -> tuple[int, int, list[int], str]:
    """(uid, gid, supplementary gids, home) for ``name``, ``uid``, ``name:group`` or ``uid:gid``, read from the
    container's own passwd and group files as Docker does."""
    name, _, grp = (user or "0").partition(":")
    users = _entries(passwd)
    entry = next((e for e in users if len(e) >= 7 and (e[0] == name or e[2] == name)), None)
    if entry is not None:
        uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
    elif name.isdigit():
        uid, gid, home = int(name), 0, "/"
    else:
        raise StartError(f"unable to find user {name}: no matching entries in passwd file", 126)
    groups_file = _entries(group)
    if grp:
        match = next((g for g in groups_file if len(g) >= 3 and (g[0] == grp or g[2] == grp)), None)
        if match is not None:
            gid = int(match[2])
        elif grp.isdigit():
            gid = int(grp)
        else:
            raise StartError(f"unable to find group {grp}: no matching entries in group file", 126)
    username = entry[0] if entry else None
    extra = [int(g[2]) for g in groups_file if len(g) >= 4 and username and username in g[3].split(",")]
    return uid, gid, sorted(set(extra + [gid])), home


def _group_id(group: str) -> int:
    if str(group).isdigit():
        return int(group)
    match = next((g for g in _entries("/etc/group") if len(g) >= 3 and g[0] == group), None)
    if match is None:
        raise StartError(f"unable to find group {group}: no matching entries in group file", 126)
    return int(match[2])


def build_env(env: list[str], home: str) -> list[str]:
    keys = {e.partition("=")[0] for e in env}
    out = list(env)
    if "PATH" not in keys:
        out.insert(0, "PATH=" + DEFAULT_PATH)
    if "HOME" not in keys:
        out.append("HOME=" + (home or "/"))
    return out


def become_user(spec: dict) -> list[str]:
    """Applies user, capabilities and working dir; returns the environment to exec with."""
    uid, gid, groups, home = resolve_user(spec.get("user") or "")
    env = build_env(spec["env"], home)
    cwd = spec.get("cwd") or "/"
    try:
        os.makedirs(cwd, exist_ok=True)
    except OSError:
        pass
    for name, soft, hard in spec.get("ulimits") or []:
        resource.setrlimit(name, (soft, hard))
    if spec.get("seccomp"):
        seccomp.install()
    if spec.get("caps") is not None:
        sc.limit_capabilities(set(spec["caps"]))
    os.setgroups(sorted(set(groups + [_group_id(g) for g in spec.get("group_add") or []])))
    os.setgid(gid)
    os.setuid(uid)
    try:
        os.chdir(cwd)
    except OSError as e:
        raise StartError(f"chdir to cwd ({cwd!r}) set in config.json failed: {e.strerror}", 126) from None
    return env


def exec_command(args: list[str], env: list[str]) -> NoReturn:
    environ = dict(e.partition("=")[::2] for e in env)
    program = args[0]
    try:
        if "/" in program:
            os.execve(program, args, environ)
        os.execvpe(program, args, environ)
    except FileNotFoundError:
        if "/" in program:
            raise StartError(f'exec: "{program}": stat {program}: no such file or directory', 127) from None
        raise StartError(f'exec: "{program}": executable file not found in $PATH', 127) from None
    except PermissionError:
        raise StartError(f'exec: "{program}": permission denied', 126) from None
    except OSError as e:
        raise StartError(f'exec: "{program}": {e.strerror}', 126) from None
    raise AssertionError("unreachable")


def exit_code(status: int) -> int:
    """Docker's exit code from a wait status: the code, or 128 + signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def forward_signals(target: list[int]) -> None:
    """Installed before the fork, so no signal sent right after start is lost. Only the init process forwards:
    in the child (until exec resets the handlers) the target is still 0."""
    init = os.getpid()

    def forward(sig: int, _frame: object) -> None:
        if target[0] > 0 and os.getpid() == init:
            try:
                os.kill(target[0], sig)
            except ProcessLookupError:
                pass

    for sig in range(1, signal.NSIG):
        if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            try:
                signal.signal(sig, forward)
            except (OSError, ValueError, RuntimeError):
                pass


def run_init(child: int) -> NoReturn:
    """Minimal PID 1 (``--init``): reaps every orphan until the command ends, then exits with its code."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        if pid == child:
            os._exit(exit_code(status))


def start_command(spec: dict, report_fd: int) -> NoReturn:
    """User, capabilities, then exec (behind a minimal init when asked). Failure is reported, never raised."""
    try:
        env = become_user(spec)
        if spec.get("init"):
            # before the fork: the command may look at PID 1 at once
            sc.set_process_title("init -- " + " ".join(spec["args"]), "init")
            target = [0]
            forward_signals(target)
            child = os.fork()
            if child:
                target[0] = child
                os.close(report_fd)  # only the command's exec may end the daemon's wait for EOF
                run_init(child)
        exec_command(spec["args"], env)
    except StartError as e:
        report(report_fd, "err", str(e))
        os._exit(e.code)
    except BaseException as e:  # noqa: BLE001 - anything else must still reach the daemon as a message
        report(report_fd, "err", f"{type(e).__name__}: {e}")
        os._exit(126)


def container_child(spec: dict, stdio: tuple[int, int, int] | None, report_fd: int, go_fd: int,
                    netns_fd: int | None, console: socket.socket | None) -> NoReturn:
    """Body of the container's PID 1 before exec: namespaces and root, then wait for the daemon's go (the shim
    puts it in its cgroup meanwhile; it forks nothing before go). With a TTY (``stdio`` None) the pty is made inside the new root and its master sent over ``console``."""
    try:
        reset_signals()
        if stdio is not None:
            setup_stdio(stdio, False)
        flags = sc.CLONE_NEWNS
        if not spec.get("uts_host"):
            flags |= sc.CLONE_NEWUTS
        if not spec.get("ipc_host"):
            flags |= sc.CLONE_NEWIPC
        if spec["network"] == "new":
            flags |= sc.CLONE_NEWNET
        sc.unshare(flags)
        if netns_fd is not None:
            sc.setns(netns_fd, sc.CLONE_NEWNET)
            os.close(netns_fd)
        if spec["network"] == "new":
            sc.loopback_up()
        report(report_fd, "ns")
        if not spec.get("uts_host"):
            sc.sethostname(spec["hostname"])
        prepare_root(spec)
        if console is not None:
            setup_stdio(open_console(console), True)
            sc.mount(os.ttyname(0), "/dev/console", None, sc.MS_BIND)
        if os.read(go_fd, 1) != b"g":
            os._exit(1)
        os.close(go_fd)
    except StartError as e:
        report(report_fd, "err", str(e))
        os._exit(e.code)
    except BaseException as e:  # noqa: BLE001 - report whatever broke the setup
        report(report_fd, "err", f"OCI runtime create failed: {e}")
        os._exit(127)
    start_command(spec, report_fd)


def enter_child(pid: int, spec: dict, stdio: tuple[int, int, int] | None, report_fd: int, status_fd: int,
                console: socket.socket | None) -> NoReturn:
    """Exec: joins the namespaces and cgroup of the container whose PID 1 is ``pid``, forks into its PID namespace,
    waits for the command and writes its exit code to ``status_fd`` (the daemon is not this process's parent)."""

    def finish(code: int) -> NoReturn:
        os.write(status_fd, b"%d" % code)
        os._exit(code)

    try:
        sc.set_process_title("machines-exec " + spec["id"], "exec-" + spec["id"][:10])
        fds = [(os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY), flag) for ns, flag in (
            ("ipc", sc.CLONE_NEWIPC), ("uts", sc.CLONE_NEWUTS), ("net", sc.CLONE_NEWNET),
            ("pid", sc.CLONE_NEWPID), ("mnt", sc.CLONE_NEWNS))]
        root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY)
        open_cgroup(spec["cgroup"]).join(0)
        for fd, flag in fds:
            sc.setns(fd, flag)
            os.close(fd)
        os.fchdir(root)
        os.chroot(".")
        os.close(root)
        reset_signals()
        if console is not None:
            stdio = open_console(console)
        assert stdio is not None
        child = os.fork()
        if child == 0:
            setup_stdio(stdio, spec["tty"])
            start_command(spec, report_fd)
        report(report_fd, "pid", str(child))
        for fd in set(stdio):
            os.close(fd)
        os.close(report_fd)
        _, status = os.waitpid(child, 0)
        finish(exit_code(status))
    except BaseException as e:  # noqa: BLE001 - report whatever broke the join
        report(report_fd, "err", f"OCI runtime exec failed: {e}")
        finish(126)
