"""End to end over real sshd hosts in network namespaces: the generic driver, scp, host-key pinning, rollback."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shlex
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from machines import Machines, transfer
from machines.bootstrap import provision
from machines.drivers import registry
from machines.drivers.nshost import Bridge, IsolatedHost
from machines.machine import Machine
from machines.ssh import CommandError
from tests.support.hosts import HostFactory, Namespaces, TestHost, leftovers

from .fakes import NsHostDriver

MACHINES = str(Path(sys.executable).with_name("machines"))


def unique(label: str) -> str:
    return f"{label}{os.getpid()}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def machines_cli(store_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MACHINES, "-s", str(store_path), *args], input=stdin, capture_output=True, text=True,
                              timeout=60, stdin=None if stdin is not None else subprocess.DEVNULL)

    return run


def _interactive(store_path: Path, name: str, typed: bytes) -> tuple[str, int]:
    """Run ``machines ssh NAME`` on a pseudo-terminal, type ``typed``; returns what the terminal showed and the status."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([MACHINES, "-s", str(store_path), "ssh", name], stdin=terminal, stdout=terminal,
                               stderr=terminal, start_new_session=True)
    os.close(terminal)
    os.write(controller, typed)
    shown = b""
    try:
        while select.select([controller], [], [], 30)[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not chunk:
                break
            shown += chunk
        return shown.decode(errors="replace"), process.wait(30)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()


def _create_generic(run: Callable[..., subprocess.CompletedProcess[str]], name: str, host: TestHost) -> None:
    result = run("create", "-d", "generic", "--generic-ip-address", host.address, "--generic-ssh-key", str(host.key_path),
                 "--no-provision", "--timeout-ssh", "20", name)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{name}\n"


def test_generic_driver_manages_an_existing_host(
    test_host: HostFactory, machines_cli: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path, store_path: Path,
) -> None:
    first, second = test_host(), test_host()
    _create_generic(machines_cli, "a", first)
    _create_generic(machines_cli, "b", second)

    listing = machines_cli("ls", "--format", "{name} {driver} {state} {url}")
    assert listing.stdout.splitlines() == [
        f"a generic Running tcp://{first.address}:2376", f"b generic Running tcp://{second.address}:2376"
    ]
    assert machines_cli("ssh", "a", "hostname").stdout == f"{first.name}\n"
    piped = machines_cli("ssh", "b", "cat; exit 7", stdin="through stdin")
    assert (piped.returncode, piped.stdout) == (7, "through stdin")
    output, status = _interactive(store_path, "a", b"echo tty=$(tty) on $(hostname); exit 3\n")
    assert status == 3 and "tty=/dev/pts/" in output and f"on {first.name}" in output

    # scp: local -> machine, machine -> machine (through here), machine -> local, and a tree with -r.
    local = tmp_path / "note.txt"
    local.write_text("hello from the test")
    os.chmod(local, 0o640)
    assert machines_cli("scp", str(local), "a:/data/note.txt").returncode == 0
    assert machines_cli("scp", "a:/data/note.txt", "b:/data/copied.txt").returncode == 0
    assert Path(second.host.data_dir, "copied.txt").read_text() == "hello from the test"
    assert (Path(second.host.data_dir, "copied.txt").stat().st_mode & 0o777) == 0o640
    library = Machines(store_path)
    transfer.copy(library, "b:/data/copied.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_text() == "hello from the test"
    tree = tmp_path / "tree" / "sub"
    tree.mkdir(parents=True)
    (tree / "leaf").write_text("leaf")
    refused = machines_cli("scp", str(tmp_path / "tree"), "a:/data/")
    assert refused.returncode == 2 and "is a directory (use -r)" in refused.stderr
    transfer.copy(library, str(tmp_path / "tree"), "a:/data/", recursive=True)
    assert machines_cli("scp", "-r", "a:/data/tree", "b:/data/tree2").returncode == 0
    assert Path(second.host.data_dir, "tree2", "sub", "leaf").read_text() == "leaf"

    # The generic driver does not own the host: no stop, and rm forgets it without touching it.
    stop = machines_cli("stop", "a")
    assert stop.returncode == 1 and "cannot stop a host it does not manage" in stop.stderr
    assert machines_cli("rm", "-y", "a", "b").returncode == 0
    assert not any((store_path / "machines").iterdir())
    assert first.host.state().value == "running" and Path(first.host.data_dir, "note.txt").exists()
    assert second.run("hostname").stdout == f"{second.name}\n"


def test_changed_host_key_is_refused(
    test_host: HostFactory, machines_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    host = test_host()
    _create_generic(machines_cli, "pinned", host)
    assert machines_cli("ssh", "pinned", "true").returncode == 0

    # The host is replaced by another one at the same address (same user key, new host key).
    address = host.address
    host.close()
    host.host.remove()
    impostor = test_host(address=address)
    result = machines_cli("ssh", "pinned", "touch /data/should-not-exist")
    assert result.returncode == 1
    assert "host key of pinned" in result.stderr and "has changed" in result.stderr and "refusing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not Path(impostor.host.data_dir, "should-not-exist").exists()
    copy = machines_cli("scp", "pinned:/etc/hostname", "/tmp/never")
    assert copy.returncode == 1 and "has changed" in copy.stderr


@pytest.fixture
def nstest(test_bridge: Bridge, tmp_path: Path, store_path: Path) -> Iterator[Callable[..., Machine]]:
    """``create(label, **options)``: a machine of the ``nstest`` driver on this worker's test bridge.

    Whatever a test leaves in the store is removed afterwards, with its host.
    """
    registry.register("nstest", NsHostDriver)
    machines = Machines(store_path)

    def create(label: str, **options: Any) -> Machine:
        name = unique(label)
        flags = {"state_dir": str(tmp_path / name), "bridge": test_bridge.name, "subnet": test_bridge.subnet}
        return machines.create(name, "nstest", flags, ssh_timeout=20, **options)

    yield create
    for machine in machines.list():
        machines.remove(machine.name, force=True)
    registry.unregister("nstest")


def test_failed_provisioning_removes_the_host_and_the_entry(
    nstest: Callable[..., Machine], store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def failing_provision(machine: Machine, progress: object) -> None:
        """A provisioning step that really runs on the host, then fails."""
        host = TestHost(IsolatedHost(machine.driver.config["state_dir"]), machine.key_path)
        seen.update(name=machine.name, record=host.record, namespaces=host.namespaces(), state_dir=host.host.state_dir)
        machine.ssh().run("touch /data/half-provisioned && exit 3")

    monkeypatch.setattr(provision, "provision", failing_provision)
    with pytest.raises(CommandError, match="exited with status 3"):
        nstest("rb")

    assert leftovers(seen["record"], seen["namespaces"]) == []
    assert not Path(seen["state_dir"]).exists()
    machines = Machines(store_path)
    assert machines.store.names() == [] and not machines.store.machine_dir(seen["name"]).exists()


def test_create_pins_the_drivers_host_key_and_runs_over_ssh(nstest: Callable[..., Machine], store_path: Path) -> None:
    machine = nstest("ok", provision=False)
    assert machine.record["state"] == "ready"
    assert machine.record["ssh_host_key"] == IsolatedHost(machine.driver.config["state_dir"]).host_public_key
    connection = machine.ssh()
    result = connection.run("cat; echo err >&2; exit 4", input=b"in", check=False)
    assert (result.exit_status, result.stdout, result.stderr) == (4, "in", "err\n")
    connection.put_bytes(b"payload", "/data/p", mode=0o600)
    assert connection.get_bytes("/data/p") == b"payload"
    assert connection.run("stat -c %a /data/p").stdout.strip() == "600"
    machines = Machines(store_path)
    assert machines.get(machine.name).state().value == "Running"

    record, namespaces = IsolatedHost(machine.driver.config["state_dir"]).record, _namespaces(machine)
    machine.close()
    machines.remove(machine.name)
    assert leftovers(record, namespaces) == [] and machines.store.names() == []


def _namespaces(machine: Machine) -> Namespaces:
    return TestHost(IsolatedHost(machine.driver.config["state_dir"]), machine.key_path).namespaces()


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    """A TCP echo service on this machine's loopback only (port chosen by the kernel)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = server.accept()
                with client:
                    client.sendall(b"echo:" + client.recv(1024))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


REMOTE_UNIX_ECHO = (
    "import os,socket,sys\n"
    "s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4); os.write(1,b'ready\\n')\n"
    "while True:\n"
    " c,_=s.accept(); c.sendall(b'unix:'+c.recv(1024)); c.close()\n"
)


def test_port_forwards_both_ways(nstest: Callable[..., Machine], tmp_path: Path) -> None:
    machine = nstest("fw", provision=False)
    server, _ = _echo_server()
    try:
        connection = machine.ssh()
        # The host reaches a loopback-only service of this machine through a remote forward.
        remote_port = connection.request_remote_forward(0, "127.0.0.1", server.getsockname()[1])
        ask = (f"import socket; s=socket.create_connection(('127.0.0.1',{remote_port})); s.sendall(b'hi'); print(s.recv(100).decode())")
        assert connection.run(f"python3 -c {shlex.quote(ask)}").stdout == "echo:hi\n"

        # A local unix socket reaches a unix socket on the host.
        connection.run(f"setsid python3 -c {shlex.quote(REMOTE_UNIX_ECHO)} /run/echo.sock > /run/echo.log 2>&1 &")
        connection.run("for i in $(seq 100); do test -S /run/echo.sock && exit 0; sleep 0.05; done; exit 1")
        local_socket = str(tmp_path / "fw.sock")
        with connection.forward_local_unix(local_socket, "/run/echo.sock"):
            assert os.stat(local_socket).st_mode & 0o777 == 0o600
            for attempt in (b"one", b"two"):
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(local_socket)
                    client.sendall(attempt)
                    assert client.recv(100) == b"unix:" + attempt
        assert not os.path.exists(local_socket)
    finally:
        server.close()
        machine.close()
