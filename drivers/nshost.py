"""Isolated hosts on this Linux machine: a network namespace on a bridge running its own sshd.

Why: the ``local`` driver and every test that needs a real SSH host use this instead of a VM. A host is made of a
network namespace with a veth on a bridge (own address, ``lo`` up, no default route) and a process tree in its own
mount, UTS, IPC, PID and cgroup namespaces whose PID 1 is ``sshd``. Its root is an overlay with the live ``/`` as the
lower layer and a per-host upper dir, so files written on one host are invisible elsewhere while installed packages
show through. ``/data`` is a per-host plain folder (overlayfs cannot nest inside an overlay upper dir, so container
storage must live there).

Everything a host needs is kept in one state directory the caller owns (``host.json``, ``upper/``, ``work/``,
``root/``, ``data/``, ``sshd.log``). Addresses are leased per bridge in ``/run/machines-local/<bridge>/`` under a
flock, so different processes, stores and tests can share a bridge. A host keeps running after the Python process
that started it exits (sshd runs in its own session); stopping it kills sshd, the PID 1 of its PID namespace, which
ends everything inside, while ``upper/`` and ``data/`` persist.

This module knows nothing of the machines store: it is plain Python over ``ip``, ``unshare`` and ``sshd``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import fcntl
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from machines.drivers.cloudinit import generate_host_key
from machines.errors import DriverError

DEFAULT_BRIDGE = "mlocal0"
DEFAULT_SUBNET = "10.213.0.1/24"
LEASE_ROOT = "/run/machines-local"
SSH_PORT = 22
# Tools a host needs on the machine, with the Debian package that brings each.
REQUIRED_TOOLS = {"ip": "iproute2", "unshare": "util-linux", "sshd": "openssh-server", "mount": "mount"}

# What a host sees of the machine's devices: these character devices only, never a disk (and its devices cgroup
# allows no other, so a node made with mknod cannot be opened either). /dev/pts, /dev/shm and /dev/mqueue are its own.
HOST_DEVICES = ("null", "zero", "full", "random", "urandom", "tty", "fuse", "net")
HOST_DEVICE_RULES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                     "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:200 rwm", "c 10:229 rwm")
DEV_LINKS = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2"}
# Machine folders a host never sees: its own empty ones (/root, /home), and fresh tmpfs for /tmp and /run.
PRIVATE_FOLDERS = ("/root", "/home", "/tmp", "/run", "/dev", "/proc", "/sys")

UndoStep = Callable[[], object]  # what it returns is ignored
Recorder = Callable[[str, UndoStep], None]

# Hosts this process started: their Popen objects, so stopping one reaps it instead of leaving a zombie (PID 1 of
# some machines, e.g. CI sandboxes, never reaps orphans).
_children: dict[int, subprocess.Popen[bytes]] = {}


class NsHostError(DriverError):
    """An isolated host could not be made, started, stopped or removed; the message says which step failed."""


class SubnetInUseError(NsHostError):
    """Another interface of the machine already has an address in the subnet asked for a new bridge."""


class HostState(str, enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    NOT_FOUND = "not-found"


# -- small helpers -------------------------------------------------------------------------------------------------

def _run(args: list[str], *, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool and turn its failure into one readable error line."""
    result = subprocess.run(args, stdin=None if input is not None else subprocess.DEVNULL, input=input,
                            capture_output=True, text=True)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        what = shlex.join(args) + (f" with {input.strip().splitlines()}" if input else "")
        raise NsHostError(f"{what} failed: {detail[-1] if detail else f'exit {result.returncode}'}")
    return result


def _run_batch(options: list[str], commands: list[str]) -> None:
    """Several ``ip`` commands in one process (each process start costs milliseconds)."""
    _run(["ip", *options, "-batch", "-"], input="\n".join(commands) + "\n")


def _netns_exists(name: str) -> bool:
    """A live namespace file is an nsfs bind mount, so its device differs from its folder's (no process needed)."""
    try:
        return os.stat(f"/run/netns/{name}").st_dev != os.stat("/run/netns").st_dev
    except FileNotFoundError:
        return False


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _write(path: str, data: str | bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Write a file atomically with ``mode`` (keys 0600) so a crash never leaves half a config. ``durable`` also
    syncs it: for the records other processes rely on; a host's own files skip it to keep create fast."""
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data.encode() if isinstance(data, str) else data)
        os.fchmod(fd, mode)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _mkdir_like(path: str, model: str, default_mode: int = 0o755) -> None:
    """Make a dir in an upper layer with the lower dir's mode, so the merged dir looks like the real one."""
    mode = os.stat(model).st_mode & 0o7777 if os.path.isdir(model) else default_mode
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)


def _proc_start_time(pid: int) -> int | None:
    """The start time of a live (non-zombie) process, used with its pid to survive pid reuse."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def missing_tools() -> list[str]:
    """Tools (with their Debian package) that are absent, for a clear pre-create error."""
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [f"{tool} (Debian package {package})" for tool, package in REQUIRED_TOOLS.items()
            if shutil.which(tool, path=search) is None]


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path``; retries when the file was deleted by the previous holder."""
    while True:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # the previous holder removed the directory in between
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


# -- the bridge and its address leases --------------------------------------------------------------------------

class Bridge:
    """A Linux bridge in the root namespace and the leases of its addresses.

    Leases live in ``/run/machines-local/<bridge>/leases.json`` (``{address: owner}``) and are changed only under
    the bridge's flock. An owner is a host's state directory; a lease whose directory no longer holds a host is
    stale and reused. ``holds`` keep a bridge alive without an address (a test session). The bridge is made with the
    first lease or hold and deleted with the last one, when this module made it.
    """

    def __init__(self, name: str = DEFAULT_BRIDGE, subnet: str = DEFAULT_SUBNET) -> None:
        if not name or len(name) > 15 or "/" in name or " " in name:
            raise NsHostError(f"invalid bridge name {name!r}: 1 to 15 characters, no '/' or spaces")
        try:
            interface = ipaddress.ip_interface(subnet)
        except ValueError as error:
            raise NsHostError(f"invalid subnet {subnet!r}: {error}") from None
        if interface.version != 4 or interface.network.num_addresses < 4:
            raise NsHostError(f"invalid subnet {subnet!r}: an IPv4 network of at least 4 addresses is needed")
        self.name = name
        self.network = interface.network
        # The bridge's own address is the one given, or the first of the network when a network was given.
        self.gateway = interface.ip if interface.ip != interface.network.network_address else next(self.network.hosts())
        self.dir = os.path.join(LEASE_ROOT, name)

    @property
    def subnet(self) -> str:
        return f"{self.gateway}/{self.network.prefixlen}"

    @contextlib.contextmanager
    def _leases(self) -> Iterator[dict[str, Any]]:
        """The lease table, locked; saved when the block ends; the bridge is kept or dropped to match it."""
        path = os.path.join(self.dir, "leases.json")
        with _flock(os.path.join(self.dir, "lock")):
            try:
                with open(path) as file:
                    table = json.load(file)
            except FileNotFoundError:
                table = {"subnet": self.subnet, "owned": False, "leases": {}, "holds": {}}
            try:
                self._drop_stale(table)  # a dead run's leases must not pin the subnet
                if table["subnet"] != self.subnet and (table["leases"] or table["holds"]):
                    raise NsHostError(f"bridge {self.name} is in use with subnet {table['subnet']}, "
                                      f"not {self.subnet}")
                table["subnet"] = self.subnet
                yield table
                if table["leases"] or table["holds"]:
                    if not _link_exists(self.name):
                        table["owned"] = self._make()
                    _write(path, json.dumps(table, indent=1), 0o600)
                    return
                if table["owned"] and _link_exists(self.name):
                    self._delete()
            except BaseException:
                if not os.path.exists(path):  # nothing was ever saved: leave no folder behind
                    self._forget()
                raise
            self._forget()

    def _forget(self) -> None:
        """Delete the lease folder (lock file last, while still holding it): no lease or hold is left."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, "leases.json"))
        os.unlink(os.path.join(self.dir, "lock"))
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)

    @staticmethod
    def _drop_stale(table: dict[str, Any]) -> None:
        table["leases"] = {address: owner for address, owner in table["leases"].items()
                           if os.path.exists(os.path.join(owner, "host.json"))}
        table["holds"] = {owner: start for owner, start in table["holds"].items()
                          if _proc_start_time(int(owner)) == start}

    def _make(self) -> bool:
        """Create the bridge with its address; refuse a subnet another interface already uses."""
        with _flock(os.path.join(LEASE_ROOT, ".lock")):
            self.check_free()
            _run(["ip", "link", "add", "name", self.name, "type", "bridge"])
            try:
                _run(["ip", "addr", "add", self.subnet, "dev", self.name])
                _run(["ip", "link", "set", self.name, "up"])
                self._forward_rule("-I")
            except BaseException:
                _run(["ip", "link", "del", self.name], check=False)
                raise
        return True

    def check_free(self) -> None:
        """Refuse a subnet that an interface other than this bridge already uses (before making the bridge)."""
        for line in _run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
            fields = line.split()
            used = ipaddress.ip_interface(fields[3])
            if fields[1] != self.name and used.network.overlaps(self.network):
                raise SubnetInUseError(f"subnet {self.network} overlaps {used} on interface {fields[1]}")

    def _delete(self) -> None:
        self._forward_rule("-D")
        _run(["ip", "link", "del", self.name], check=False)

    def _forward_rule(self, action: str) -> None:
        """Let hosts on the bridge talk to each other even when a FORWARD policy of DROP is set (dockerd sets it
        and bridged traffic goes through iptables when br_netfilter is loaded)."""
        if shutil.which("iptables") is None:
            return
        rule = ["FORWARD", "-i", self.name, "-o", self.name, "-j", "ACCEPT"]
        if action == "-D" and _run(["iptables", "-w", "-C", *rule], check=False).returncode != 0:
            return
        _run(["iptables", "-w", action, *rule], check=action == "-I")

    def lease(self, owner: str, address: str | None = None) -> str:
        """Reserve an address for ``owner`` (a host's state dir): the one asked for, or the lowest free one."""
        owner = os.path.realpath(owner)
        with self._leases() as table:
            leases: dict[str, str] = table["leases"]
            mine = [held for held, holder in leases.items() if holder == owner]
            if address is not None:
                try:
                    wanted = ipaddress.ip_address(address)
                except ValueError:
                    raise NsHostError(f"invalid address {address!r}") from None
                if wanted not in self.network or wanted in (self.gateway, self.network.broadcast_address,
                                                            self.network.network_address):
                    raise NsHostError(f"address {address} is not a free host address of {self.network}")
                holder = leases.get(str(wanted))
                if holder not in (None, owner):
                    raise NsHostError(f"address {address} is already used by the host in {holder}")
                chosen = str(wanted)
            elif mine:
                chosen = mine[0]
            else:
                free = (str(host) for host in self.network.hosts() if host != self.gateway and str(host) not in leases)
                found = next(free, None)
                if found is None:
                    raise NsHostError(f"no free address left on bridge {self.name} ({self.network})")
                chosen = found
            for held in mine:
                leases.pop(held)
            leases[chosen] = owner
            return chosen

    def release(self, owner: str) -> None:
        """Give back ``owner``'s address; the bridge goes with the last lease."""
        owner = os.path.realpath(owner)
        with self._leases() as table:
            table["leases"] = {address: holder for address, holder in table["leases"].items() if holder != owner}

    def hold(self) -> None:
        """Keep the bridge (made now if needed) for as long as this process lives or until ``unhold``."""
        with self._leases() as table:
            table["holds"][str(os.getpid())] = _proc_start_time(os.getpid())

    def unhold(self) -> None:
        with self._leases() as table:
            table["holds"].pop(str(os.getpid()), None)

    def collect(self) -> None:
        """Drop stale leases and holds, deleting the bridge when none is left (after a crashed process)."""
        with self._leases():
            pass

    def exists(self) -> bool:
        return _link_exists(self.name)


def hold_free_bridge(name: str, base: str = "10.213", first: int = 16, seed: int = 0) -> Bridge:
    """Hold a bridge named ``name`` on the first ``<base>.N.0/24`` (N >= first, starting at ``seed``) that no
    interface of the machine uses: for tests and benchmarks that must not meet each other's hosts."""
    span = 256 - first
    for attempt in range(span):
        bridge = Bridge(name, f"{base}.{first + (seed + attempt) % span}.1/24")
        try:
            bridge.hold()
        except SubnetInUseError:
            continue
        return bridge
    raise NsHostError(f"no free {base}.N.0/24 subnet for bridge {name}")


# -- one host --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class HostRecord:
    """What ``host.json`` keeps: enough to start, stop and remove the host from any later process."""

    name: str
    bridge: str
    subnet: str
    address: str
    netns: str
    veth: str
    pid: int | None = None
    pid_start: int | None = None
    cgroups: list[str] = dataclasses.field(default_factory=list)  # the host's own cgroup in every hierarchy
    hidden: list[str] = dataclasses.field(default_factory=list)  # machine folders covered by an empty tmpfs


SSHD_CONFIG = """\
# Written by machines for an isolated host: key authentication only.
Port {port}
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
MaxSessions 100
MaxStartups 100:30:200
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
"""


def _cgroup_mounts(target: str) -> tuple[list[str], list[str]]:
    """fstab lines that mount this machine's cgroup hierarchies again at ``target`` (v1, v2 or hybrid), and the
    shell lines for the symlinks beside them (``cpu -> cpu,cpuacct``).

    ``ip netns exec`` remounts ``/sys``, which leaves ``/sys/fs/cgroup`` empty, so a container runtime inside would
    find no cgroups.
    """
    mounts: list[tuple[str, str, str]] = []
    with open("/proc/self/mounts") as file:
        for line in file:
            _, mountpoint, fstype, options = line.split()[:4]
            if fstype in ("cgroup", "cgroup2", "tmpfs") and mountpoint.startswith("/sys/fs/cgroup"):
                mounts.append((mountpoint, fstype, options))
    if any(mountpoint == "/sys/fs/cgroup" and fstype == "cgroup2" for mountpoint, fstype, _ in mounts):
        return [f"cgroup2 {target} cgroup2 rw,nosuid,nodev,noexec 0 0"], []
    if not mounts:
        return [], []
    entries = [f"cgroup {target} tmpfs mode=0755,nosuid,nodev,noexec 0 0"]
    entries += [f"{fstype} {target}{mountpoint[len('/sys/fs/cgroup'):]} {fstype} {options},X-mount.mkdir 0 0"
                for mountpoint, fstype, options in mounts if mountpoint != "/sys/fs/cgroup"]
    links = [f"ln -s {shlex.quote(os.readlink(entry.path))} {shlex.quote(f'{target}/{entry.name}')}"
             for entry in os.scandir("/sys/fs/cgroup") if entry.is_symlink()]
    return entries, links


def _own_cgroups() -> list[str]:
    """The folder of this process's cgroup in every mounted hierarchy (v1 controllers, named ones, cgroup2)."""
    mounts: list[tuple[str, str, set[str]]] = []
    with open("/proc/self/mounts") as file:
        for line in file:
            _, mountpoint, fstype, options = line.split()[:4]
            if fstype in ("cgroup", "cgroup2"):
                mounts.append((mountpoint, fstype, set(options.split(","))))
    folders: list[str] = []
    with open("/proc/self/cgroup") as file:
        for line in file:
            hierarchy, controllers, path = line.rstrip("\n").split(":", 2)
            wanted = set(controllers.split(",")) - {""}
            for mountpoint, fstype, mount_options in mounts:
                if (fstype == "cgroup2") == (hierarchy == "0") and wanted <= mount_options:
                    folders.append(os.path.join(mountpoint, path.lstrip("/")))
                    break
    return folders


def _make_cgroup(folder: str) -> None:
    """A new cgroup; a v1 cpuset one gets its parent's CPUs and memory nodes, without which nothing can join it."""
    os.makedirs(folder, exist_ok=True)
    for setting in ("cpuset.cpus", "cpuset.mems"):
        mine = os.path.join(folder, setting)
        if not os.path.exists(mine):
            continue
        with open(mine, "r+") as child, open(os.path.join(os.path.dirname(folder), setting)) as parent:
            if not child.read().strip():
                child.write(parent.read().strip())


def _limit_devices(folder: str) -> None:
    """In a v1 devices hierarchy, allow the host only ``HOST_DEVICE_RULES`` (no disk), before anything joins it."""
    deny = os.path.join(folder, "devices.deny")
    if not os.path.exists(deny):
        return
    with open(deny, "w") as file:
        file.write("a")
    for rule in HOST_DEVICE_RULES:
        with open(os.path.join(folder, "devices.allow"), "w") as file:
            file.write(rule)


def _remove_cgroup(folder: str, timeout: float = 5.0) -> None:
    """Delete a cgroup and every cgroup made below it (a container runtime's), deepest first."""
    deadline = time.monotonic() + timeout
    for parent, children, _ in os.walk(folder, topdown=False):
        for path in [os.path.join(parent, child) for child in children] + ([folder] if parent == folder else []):
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as error:  # EBUSY while the last tasks are still exiting
                    if error.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise NsHostError(f"cannot remove cgroup {path}: {error}") from None
                    time.sleep(0.01)


class IsolatedHost:
    """One host, addressed by its state directory. ``create`` makes it; any later process can drive it."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = os.path.realpath(state_dir)
        self._record_path = os.path.join(self.state_dir, "host.json")

    # -- persisted facts ---------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.exists(self._record_path)

    @property
    def record(self) -> HostRecord:
        try:
            with open(self._record_path) as file:
                return HostRecord(**json.load(file))
        except FileNotFoundError:
            raise NsHostError(f"no isolated host in {self.state_dir}") from None

    def _save(self, record: HostRecord) -> None:
        _write(self._record_path, json.dumps(dataclasses.asdict(record), indent=1), 0o600)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def address(self) -> str:
        return self.record.address

    @property
    def port(self) -> int:
        return SSH_PORT

    @property
    def host_public_key(self) -> str:
        """The host's SSH public key, ``ssh-ed25519 AAAA...``, to pin before the first connection."""
        with open(self._path("upper", "etc", "ssh", "ssh_host_ed25519_key.pub")) as file:
            return " ".join(file.read().split()[:2])

    @property
    def data_dir(self) -> str:
        """The folder the host sees as ``/data``."""
        return self._path("data")

    def _path(self, *parts: str) -> str:
        return os.path.join(self.state_dir, *parts)

    def _bridge(self, record: HostRecord) -> Bridge:
        return Bridge(record.bridge, record.subnet)

    # -- create ------------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, state_dir: str, name: str, authorized_key: str, *, bridge: str = DEFAULT_BRIDGE,
               subnet: str = DEFAULT_SUBNET, address: str | None = None, host_key_private: str | None = None,
               host_key_public: str | None = None, record: Recorder | None = None,
               hidden: list[str] | None = None) -> IsolatedHost:
        """Make a host (stopped): lease, files, network namespace and veth. ``hidden`` are machine folders the host
        must not see (the machines store): each is covered by an empty tmpfs inside the host.

        Each resource is passed to ``record(description, undo)`` as soon as it exists (the driver's ledger). Without
        ``record`` a failure undoes what was made here before the error propagates.
        """
        if not name or len(name) > 63 or not all(c.isalnum() or c in ".-" for c in name):
            raise NsHostError(f"invalid host name {name!r}")
        if (host_key_private is None) != (host_key_public is None):
            raise NsHostError("give both host_key_private and host_key_public, or neither")
        host = cls(state_dir)
        if any(char in host.state_dir for char in ",: \t\n\\"):
            raise NsHostError(f"the host directory {host.state_dir} may not contain commas, colons, spaces or "
                              "backslashes (they cannot be written in mount options)")
        if host.exists():
            raise NsHostError(f"an isolated host already exists in {host.state_dir}")
        undo: list[tuple[str, UndoStep]] = []

        def made(description: str, step: UndoStep) -> None:
            (record or (lambda *pair: undo.append(pair)))(description, step)

        try:
            host._create(name, authorized_key, Bridge(bridge, subnet), address,
                         host_key_private, host_key_public, made, [os.path.realpath(path) for path in hidden or []])
        except BaseException:
            for _, step in reversed(undo):
                with contextlib.suppress(Exception):
                    step()
            raise
        return host

    def _create(self, name: str, authorized_key: str, bridge: Bridge, address: str | None,
                host_key_private: str | None, host_key_public: str | None, made: Recorder, hidden: list[str]) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        made(f"host files in {self.state_dir}", self._remove_files)
        token = secrets.token_hex(4)
        record = HostRecord(name=name, bridge=bridge.name, subnet=bridge.subnet, address="",
                            netns=f"mlocal-{name[:40]}-{token}", veth=f"mlv{token}", hidden=hidden)
        self._save(record)  # before the lease: a lease is live only while its owner's host.json exists
        record.address = bridge.lease(self.state_dir, address)
        made(f"address {record.address} on bridge {bridge.name}", lambda: bridge.release(self.state_dir))
        self._save(record)
        if host_key_private is None or host_key_public is None:
            host_key_private, host_key_public = generate_host_key()
        self._write_files(record, authorized_key, host_key_private, host_key_public)
        self._make_network(record, made)

    def _write_files(self, record: HostRecord, authorized_key: str, key_private: str, key_public: str) -> None:
        """The host's own files in its upper layer: sshd config and key, root's login, name and resolver."""
        for part in ("work", "root", "data"):
            os.makedirs(self._path(part), mode=0o755, exist_ok=True)
        upper = self._path("upper")
        _mkdir_like(upper, "/")
        _mkdir_like(os.path.join(upper, "etc"), "/etc")
        _mkdir_like(os.path.join(upper, "etc", "ssh"), "/etc/ssh")
        os.makedirs(os.path.join(upper, "data"), mode=0o755, exist_ok=True)  # the mount point of /data
        self._seal_upper()
        home = os.path.join(upper, "root")
        os.makedirs(os.path.join(home, ".ssh"), mode=0o700, exist_ok=True)
        ssh = os.path.join(upper, "etc", "ssh")
        _write(os.path.join(ssh, "sshd_config"), SSHD_CONFIG.format(port=SSH_PORT), durable=False)
        _write(os.path.join(ssh, "ssh_host_ed25519_key"), key_private.rstrip("\n") + "\n", 0o600, False)
        _write(os.path.join(ssh, "ssh_host_ed25519_key.pub"), key_public.strip() + "\n", durable=False)
        _write(os.path.join(home, ".ssh", "authorized_keys"), authorized_key.strip() + "\n", 0o600, False)
        _write(os.path.join(home, ".bashrc"), "", durable=False)
        etc = os.path.join(upper, "etc")
        _write(os.path.join(etc, "hostname"), f"{record.name}\n", durable=False)
        _write(os.path.join(etc, "hosts"), f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                                           f"{record.address}\t{record.name}\n", durable=False)
        if os.path.islink(os.path.join(etc, "resolv.conf")):
            os.unlink(os.path.join(etc, "resolv.conf"))
        # Nothing a host does may resolve names outside the machine.
        _write(os.path.join(etc, "resolv.conf"), "nameserver 127.0.0.1\n", durable=False)

    def _seal_upper(self) -> None:
        """Keep the machine's private files out of the host's view of ``/`` (idempotent; run at create and start).

        ``/root`` and ``/home`` are empty opaque folders (the machine's keys, shell init and users' files stay out);
        ``/etc/shadow`` and ``/etc/gshadow`` are the host's own copies with every password replaced by ``*`` (no
        password login, key login still allowed: ``!`` would make sshd refuse root); the machine's SSH host keys
        are whited out. A host that changed its own copies keeps them.
        """
        upper = self._path("upper")
        for folder, mode in (("root", 0o700), ("home", 0o755)):
            path = os.path.join(upper, folder)
            _mkdir_like(path, f"/{folder}", mode)
            os.setxattr(path, "trusted.overlay.opaque", b"y")
        for name in ("shadow", "gshadow"):
            source, copy = f"/etc/{name}", os.path.join(upper, "etc", name)
            if os.path.exists(source) and not os.path.lexists(copy):
                with open(source) as file:
                    lines = [line.split(":") for line in file.read().splitlines() if line.strip()]
                info = os.stat(source)
                locked = "".join(":".join([fields[0], "*", *fields[2:]]) + "\n" for fields in lines if len(fields) > 1)
                _write(copy, locked, stat.S_IMODE(info.st_mode), durable=False)
                os.chown(copy, info.st_uid, info.st_gid)
        ssh = os.path.join(upper, "etc", "ssh")
        for entry in os.scandir("/etc/ssh"):
            if entry.name.startswith("ssh_host_") and not os.path.lexists(os.path.join(ssh, entry.name)):
                os.mknod(os.path.join(ssh, entry.name), stat.S_IFCHR | 0o600, os.makedev(0, 0))  # a whiteout

    def _make_network(self, record: HostRecord, made: Recorder) -> None:
        """Network namespace with ``lo`` and ``eth0`` (its address, no default route), veth end on the bridge.

        Two ``ip -batch`` runs instead of six commands: each process start costs several milliseconds here."""
        _run(["ip", "netns", "add", record.netns])
        made(f"network namespace {record.netns}", lambda: self._delete_netns(record))
        # The MAC follows from the address, so a reused address keeps its MAC and no ARP cache points at a gone host.
        mac = "02:6d:" + ":".join(f"{byte:02x}" for byte in ipaddress.ip_address(record.address).packed)
        _run_batch([], [f"link add {record.veth} type veth peer name eth0 address {mac} netns {record.netns}",
                        f"link set {record.veth} master {record.bridge} up"])
        made(f"veth {record.veth}", lambda: _run(["ip", "link", "del", record.veth], check=False))
        prefix = ipaddress.ip_network(record.subnet, strict=False).prefixlen
        _run_batch(["-n", record.netns], [f"addr add {record.address}/{prefix} dev eth0", "link set eth0 up",
                                          "link set lo up"])

    @staticmethod
    def _delete_netns(record: HostRecord) -> None:
        if os.path.exists(f"/run/netns/{record.netns}"):
            _run(["ip", "netns", "del", record.netns], check=False)

    def _ensure_network(self, record: HostRecord) -> None:
        """Bring back the lease, bridge, namespace and veth if they are gone (after a reboot or a crash)."""
        bridge = self._bridge(record)
        bridge.lease(self.state_dir, record.address)
        if _netns_exists(record.netns):
            return
        self._delete_netns(record)
        _run(["ip", "link", "del", record.veth], check=False)
        self._make_network(record, lambda description, step: None)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _init_pid(self, record: HostRecord) -> int | None:
        """The global pid of the host's PID 1 (sshd), when running."""
        if record.pid is None or _proc_start_time(record.pid) != record.pid_start:
            return None
        children = [pid for pid in _children_of(record.pid) if _proc_start_time(pid) is not None]
        return children[0] if children else None

    @property
    def pid(self) -> int | None:
        """The pid (in the machine's PID namespace) of the host's sshd, its PID 1; None when stopped."""
        return self._init_pid(self.record) if self.exists() else None

    def state(self) -> HostState:
        if not self.exists():
            return HostState.NOT_FOUND
        record = self.record
        if record.pid is not None and _proc_start_time(record.pid) == record.pid_start:
            return HostState.RUNNING
        return HostState.STOPPED

    def start(self, timeout: float = 15.0) -> None:
        """Start sshd in the host's namespaces and wait until it accepts connections; a running host is left as is."""
        record = self.record
        if self.state() is HostState.RUNNING:
            return
        self._reap(record)
        self._ensure_network(record)
        self._seal_upper()  # hosts made by an older version get the same privacy
        try:
            self._launch(record, timeout)
        except BaseException:
            self.kill()  # ends whatever was launched and removes the cgroups made so far
            raise

    def _launch(self, record: HostRecord, timeout: float) -> None:
        # The host's own cgroups: its processes (and a container runtime's cgroups) stay apart from other hosts'
        # and go away with it. The launcher joins them before `unshare --cgroup` makes them the host's root.
        record.cgroups = [os.path.join(parent, record.netns) for parent in _own_cgroups()]
        self._save(record)  # first, so that a failure below still removes them
        unusable = []
        for folder in record.cgroups:
            try:
                _make_cgroup(folder)
                _limit_devices(folder)
            except OSError:  # a read-only or delegated-away hierarchy: the host shares this process's cgroup there
                _remove_cgroup(folder)
                unusable.append(folder)
        if unusable:
            record.cgroups = [folder for folder in record.cgroups if folder not in unusable]
            self._save(record)
        launch = [f"echo $$ > {shlex.quote(os.path.join(folder, 'cgroup.procs'))}" for folder in record.cgroups]
        launch.append(f"exec {shlex.join(self._start_command(record))}")
        _write(self._path("launch.sh"), "\n".join(launch) + "\n", 0o600, durable=False)
        with open(self._path("sshd.log"), "ab") as log:
            process = subprocess.Popen(["sh", self._path("launch.sh")], stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        _children[process.pid] = process
        record.pid, record.pid_start = process.pid, _proc_start_time(process.pid)
        self._save(record)
        self._wait_listening(record, process, timeout)

    def _start_command(self, record: HostRecord) -> list[str]:
        """The launcher: namespaces by ``unshare``, then one ``mount --all`` of the host's fstab, ``pivot_root`` and
        ``exec sshd`` (every extra process costs milliseconds, so the boot script runs only three)."""
        root, upper, work = self._path("root"), self._path("upper"), self._path("work")
        cgroups, cgroup_links = _cgroup_mounts(f"{root}/sys/fs/cgroup")
        hidden = [path for path in record.hidden
                  if not any(path == folder or path.startswith(folder + "/") for folder in PRIVATE_FOLDERS)]
        fstab = [
            f"overlay {root} overlay lowerdir=/,upperdir={upper},workdir={work} 0 0",
            *(f"tmpfs {root}{path} tmpfs mode=0700,size=16k,nosuid,nodev,noexec,X-mount.mkdir 0 0" for path in hidden),
            f"proc {root}/proc proc nosuid,nodev,noexec 0 0",
            f"/sys {root}/sys none rbind 0 0",
            f"tmpfs {root}/dev tmpfs mode=0755,nosuid,size=64k 0 0",
            f"devpts {root}/dev/pts devpts newinstance,ptmxmode=0666,mode=0620,X-mount.mkdir 0 0",
            f"tmpfs {root}/dev/shm tmpfs mode=1777,nosuid,nodev,X-mount.mkdir 0 0",
            f"mqueue {root}/dev/mqueue mqueue nosuid,nodev,noexec,X-mount.mkdir 0 0",
            f"tmpfs {root}/run tmpfs mode=0755,nosuid,nodev 0 0",
            f"tmpfs {root}/run/sshd tmpfs mode=0755,nosuid,nodev,noexec,size=64k,X-mount.mkdir 0 0",
            f"tmpfs {root}/tmp tmpfs mode=1777,nosuid,nodev 0 0",
            *cgroups,
            f"{self._path('data')} {root}/data none bind 0 0",
        ]
        _write(self._path("fstab"), "\n".join(fstab) + "\n", 0o600, durable=False)
        devices = [shlex.quote(f"/dev/{name}") for name in HOST_DEVICES if os.path.exists(f"/dev/{name}")]
        script = [
            "set -e",
            f"echo {record.name} > /proc/sys/kernel/hostname",
            f"mount --all --fstab {self._path('fstab')}",
            # One process copies the device nodes and the links (ptmx, fd, std*) prepared beside the host.
            f"cp -a {' '.join(devices)} {shlex.quote(self._dev_links())}/. {root}/dev/",
            *cgroup_links,
            # pivot_root(".", ".") stacks the old root on the new one; the lazy umount then drops it with every
            # mount of the machine (including other hosts' namespace files) from this host's view.
            f"cd {root}",
            "pivot_root . .",
            "umount -l .",
            "cd /",
            "exec /usr/sbin/sshd -D -e",
        ]
        boot = self._path("boot.sh")  # a file, not `sh -c`, so `ps` shows a short command line
        _write(boot, "\n".join(script) + "\n", 0o600, durable=False)
        return ["ip", "netns", "exec", record.netns, "unshare", "--mount", "--uts", "--ipc", "--pid", "--cgroup",
                "--fork", "--kill-child", "--propagation", "private", "sh", boot]

    def _dev_links(self) -> str:
        """A folder of the symlinks every /dev has (``ptmx``, ``fd``, ``stdin``...), copied into the host's /dev."""
        folder = self._path("dev")
        os.makedirs(folder, mode=0o755, exist_ok=True)
        for name, target in DEV_LINKS.items():
            if not os.path.islink(os.path.join(folder, name)):
                os.symlink(target, os.path.join(folder, name))
        return folder

    def _wait_listening(self, record: HostRecord, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise NsHostError(f"sshd of host {record.name} exited at start: {self._log_tail()}")
            try:
                with socket.create_connection((record.address, SSH_PORT), timeout=0.5):
                    return
            except OSError as error:
                if time.monotonic() > deadline:
                    raise NsHostError(f"sshd of host {record.name} did not listen on {record.address}:{SSH_PORT} "
                                      f"within {timeout:g}s: {error}; {self._log_tail()}") from None
            time.sleep(0.005)

    def _log_tail(self) -> str:
        try:
            with open(self._path("sshd.log"), errors="replace") as file:
                lines = [line.strip() for line in file.read().splitlines() if line.strip()]
        except OSError:
            return "no log"
        return " | ".join(lines[-3:]) or "empty log"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sshd (PID 1 of the host), which ends every process in the host; files and /data persist."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the host's PID 1 and so everything in it."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, signum: int, timeout: float) -> None:
        if not self.exists():
            return
        record = self.record
        init = self._init_pid(record)
        with contextlib.suppress(ProcessLookupError):
            if init is not None:
                os.kill(init, signum)
            elif record.pid is not None and _proc_start_time(record.pid) == record.pid_start:
                os.kill(record.pid, signal.SIGKILL)  # sshd not forked yet: end the launcher
        if record.pid is not None and _proc_start_time(record.pid) == record.pid_start:
            if not self._wait_gone(record.pid, timeout) and signum != signal.SIGKILL:
                # sshd ignored SIGTERM: the launcher's death SIGKILLs it (unshare --kill-child).
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record.pid, signal.SIGKILL)
                self._wait_gone(record.pid, timeout)
        self._reap(record)
        for folder in record.cgroups:
            _remove_cgroup(folder)
        record.pid, record.pid_start, record.cgroups = None, None, []
        self._save(record)

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        process = _children.get(pid)
        if process is not None:
            try:
                process.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        start = _proc_start_time(pid)
        deadline = time.monotonic() + timeout
        while _proc_start_time(pid) == start and start is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    @staticmethod
    def _reap(record: HostRecord) -> None:
        """Collect the exit status of a launcher this process started, so it does not linger as a zombie."""
        process = _children.get(record.pid) if record.pid is not None else None
        if process is not None and process.poll() is not None:
            del _children[process.pid]

    def remove(self) -> None:
        """Stop the host and delete everything it had: process, namespace, veth, lease, files."""
        if not self.exists():
            self._remove_files()
            return
        record = self.record
        self.kill()
        if _link_exists(record.veth):  # synchronous, unlike the namespace's own cleanup of its eth0
            _run(["ip", "link", "del", record.veth], check=False)
        self._delete_netns(record)
        self._remove_files()
        self._bridge(record).release(self.state_dir)

    def _remove_files(self) -> None:
        try:
            shutil.rmtree(self.state_dir)
        except FileNotFoundError:
            pass
        except OSError as error:
            if error.errno != errno.ENOENT:
                raise NsHostError(f"cannot delete {self.state_dir}: {error}") from None
