"""Real SSH test hosts for every area's tests: isolated hosts (``drivers.nshost``) on a bridge of this test worker.

Why a bridge per worker: tests run under pytest-xdist and several pytest runs may share the machine, so each worker
holds its own bridge (``mt<hash>``) on the first free ``10.213.N.0/24`` (N >= 16; ``mlocal0`` keeps 10.213.0.0/24).
Hosts reach a service listening on the machine's loopback through a remote port forward on their SSH connection
(``TestHost.forward_loopback``), so the service keeps the same ``127.0.0.1:PORT`` address inside the host.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import select
import socket
import threading
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import paramiko

from machines.drivers.cloudinit import generate_host_key
from machines.drivers.nshost import LEASE_ROOT, Bridge, HostRecord, IsolatedHost, hold_free_bridge

FIRST_TEST_SUBNET = 16


def unique_name(prefix: str = "h") -> str:
    """A host name unique across workers and runs (the network namespace name includes it)."""
    return f"{prefix}{os.getpid() % 10000}{uuid.uuid4().hex[:5]}"


def worker_bridge(worker: str) -> Bridge:
    """Hold a bridge for this process on the first 10.213.N.0/24 that no interface of the machine uses."""
    seed = zlib.crc32(f"{worker}-{os.getpid()}".encode())
    return hold_free_bridge(f"mt{seed % 10**8:08d}", "10.213", FIRST_TEST_SUBNET, seed)


def collect_stale_bridges() -> None:
    """Drop the leases and holds of processes that died without cleaning up (a killed test run), and with the last
    of them the bridge; live processes' leases and holds stay."""
    for table in Path(LEASE_ROOT).glob("*/leases.json"):
        with contextlib.suppress(Exception):
            Bridge(table.parent.name, json.loads(table.read_text())["subnet"]).collect()


@dataclasses.dataclass
class Result:
    exit_status: int
    stdout: str
    stderr: str


@dataclasses.dataclass(frozen=True)
class Namespaces:
    """What a running host occupies, read at one moment: its processes (pid and start time, so a reused pid does not
    count), its network namespace's name and its cgroup folders. Namespace ids alone would not do: the kernel gives
    the id of a freed namespace to the next new one."""

    members: tuple[tuple[int, int], ...]
    netns: str
    cgroups: tuple[str, ...]


class TestHost:
    """A running isolated host and how to log in: ``address``, ``port``, ``user``, ``key_path``, ``host_public_key``."""

    __test__ = False  # a helper, not a test class

    def __init__(self, host: IsolatedHost, key_path: Path) -> None:
        self.host = host
        self.name = host.name
        self.address = host.address
        self.port = host.port
        self.user = "root"
        self.key_path = key_path
        self.host_public_key = host.host_public_key
        self._client: paramiko.SSHClient | None = None

    @property
    def record(self) -> HostRecord:
        return self.host.record

    def known_hosts_line(self) -> str:
        return f"{self.address} {self.host_public_key}"

    def connect(self) -> paramiko.SSHClient:
        """A new SSH client logged in as root, host key pinned, TCP_NODELAY set; the caller closes it."""
        key_type, key_data = self.host_public_key.split()[:2]
        client = paramiko.SSHClient()
        key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_data))
        client.get_host_keys().add(self.address, key_type, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = socket.create_connection((self.address, self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.connect(self.address, self.port, self.user, key_filename=str(self.key_path), sock=sock,
                       look_for_keys=False, allow_agent=False, timeout=10)
        return client

    def run(self, command: str, check: bool = True, input: bytes | None = None, timeout: float = 60) -> Result:
        """Run a command over a cached SSH connection."""
        if self._client is None:
            self._client = self.connect()
        stdin, stdout, stderr = self._client.exec_command(command, timeout=timeout)
        if input is not None:
            stdin.write(input)
        stdin.channel.shutdown_write()
        out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
        result = Result(stdout.channel.recv_exit_status(), out, err)
        if check and result.exit_status != 0:
            raise AssertionError(f"{command!r} on {self.name} exited {result.exit_status}: {err.strip()}")
        return result

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def stop(self) -> None:
        self.close()
        self.host.stop()

    def kill(self) -> None:
        self.close()
        self.host.kill()

    def start(self) -> None:
        self.host.start()

    def namespaces(self) -> Namespaces:
        """What the running host occupies now, to prove after a stop or remove that nothing of it is left."""
        pid = self.host.pid
        assert pid is not None, f"host {self.name} is not running"
        record = self.host.record
        pid_namespace = os.readlink(f"/proc/{pid}/ns/pid")
        members = [(int(entry), _live_start(int(entry))) for entry in _pids()
                   if _namespace(entry, "pid") == pid_namespace]
        members.append((record.pid, record.pid_start))
        return Namespaces(tuple((member, start) for member, start in members if start is not None), record.netns,
                          tuple(record.cgroups))

    @contextlib.contextmanager
    def forward_loopback(self, port: int) -> Iterator[None]:
        """Make the machine's ``127.0.0.1:port`` reachable at ``127.0.0.1:port`` inside the host while the block runs
        (an SSH remote port forward: the host has no route to the machine's loopback)."""
        client = self.connect()
        transport = client.get_transport()
        assert transport is not None

        def accept(channel: paramiko.Channel, origin: tuple, server: tuple) -> None:
            threading.Thread(target=_pump, args=(channel, port), daemon=True).start()

        try:
            transport.request_port_forward("127.0.0.1", port, handler=accept)
            yield
        finally:
            with contextlib.suppress(Exception):
                transport.cancel_port_forward("127.0.0.1", port)
            client.close()


def _pump(channel: paramiko.Channel, port: int) -> None:
    """Copy bytes both ways between a forwarded channel and the loopback service until either side closes."""
    try:
        service = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        channel.close()
        return
    try:
        while True:
            readable, _, _ = select.select([service, channel], [], [], 60)
            if not readable:
                continue
            if service in readable:
                data = service.recv(65536)
                if not data:
                    break
                channel.sendall(data)
            if channel in readable:
                data = channel.recv(65536)
                if not data:
                    break
                service.sendall(data)
    except OSError:
        pass
    finally:
        service.close()
        channel.close()


# Every host a factory made in this process, for the end-of-session check that none of them left anything.
made_in_this_process: list[HostRecord] = []


class HostFactory:
    """Makes started test hosts on one bridge and removes every one of them at ``cleanup``."""

    def __init__(self, bridge: Bridge, root: Path, key_path: Path, public_key: str) -> None:
        self.bridge = bridge
        self.root = root
        self.key_path = key_path
        self.public_key = public_key
        self.made: list[TestHost] = []

    def __call__(self, name: str | None = None, *, address: str | None = None, start: bool = True) -> TestHost:
        name = name or unique_name()
        folder = self.root / f"{name}-{uuid.uuid4().hex[:6]}"
        host = IsolatedHost.create(str(folder), name, self.public_key, bridge=self.bridge.name,
                                   subnet=self.bridge.subnet, address=address)
        try:
            if start:
                host.start()
        except BaseException:
            host.remove()
            raise
        test_host = TestHost(host, self.key_path)
        self.made.append(test_host)
        made_in_this_process.append(host.record)
        return test_host

    def cleanup(self) -> None:
        errors: list[str] = []
        while self.made:
            test_host = self.made.pop()
            test_host.close()
            try:
                test_host.host.remove()
            except Exception as error:  # noqa: BLE001 - remove the others, then report
                errors.append(f"{test_host.name}: {error}")
        if errors:
            raise RuntimeError(f"test hosts not removed: {'; '.join(errors)}")


def write_key_pair(folder: Path) -> tuple[Path, str]:
    """An ed25519 login key for test hosts: (private key path, mode 0600; public key line)."""
    private, public = generate_host_key()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "id_ed25519"
    path.touch(mode=0o600)
    path.write_text(private)
    return path, public


def _pids() -> list[str]:
    return [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]


def _namespace(pid: str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def processes_in(namespaces: Namespaces) -> list[int]:
    """Live processes of the host: those it had (same pid and start time; zombies do not count) and any process in
    its network namespace while that still exists."""
    found = {pid for pid, start in namespaces.members if _live_start(pid) == start}
    try:
        netns = f"net:[{os.stat(f'/run/netns/{namespaces.netns}').st_ino}]" if namespaces.netns else None
    except FileNotFoundError:
        netns = None
    if netns is not None:
        found.update(int(pid) for pid in _pids() if _namespace(pid, "net") == netns and _live_start(int(pid)))
    return sorted(found)


def _live_start(pid: int) -> int | None:
    """Start time of a live process; None for a zombie or no process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def leftovers(record: HostRecord, namespaces: Namespaces | None = None) -> list[str]:
    """What of a removed host is still there: its namespace file, veth, a mount naming it, a live process in its
    namespaces, one of its cgroups."""
    found: list[str] = []
    if os.path.exists(f"/run/netns/{record.netns}"):
        found.append(f"netns {record.netns}")
    if os.path.exists(f"/sys/class/net/{record.veth}"):
        found.append(f"link {record.veth}")
    with open("/proc/self/mounts") as mounts:
        found += [f"mount {line.split()[1]}" for line in mounts if record.netns in line]
    return found + remaining(namespaces) if namespaces is not None else found


def remaining(namespaces: Namespaces) -> list[str]:
    """Processes still in a stopped host's namespaces and cgroups of it still there (the runtime's too)."""
    return ([f"process {pid} ({_command(pid)})" for pid in processes_in(namespaces)]
            + [f"cgroup {folder}" for folder in namespaces.cgroups if os.path.exists(folder)])


def _command(pid: int) -> str:
    """``name state`` of a process, for messages."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return "gone"
    return f"{text[text.index('(') + 1:text.rindex(')')]} {text[text.rindex(')') + 2:].split()[0]}"
