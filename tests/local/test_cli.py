"""The ``machines`` command on local hosts, end to end: what issue 2's "Done when" lists."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from machines.drivers.nshost import Bridge, IsolatedHost
from tests.support.cli import machines
from tests.support.hosts import TestHost, leftovers

Cli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def cli(tmp_path: Path, test_bridge: Bridge) -> Cli:
    """``machines`` on a store of this test, its local hosts on this worker's bridge (through the env vars)."""
    store = tmp_path / "store"
    env = {**os.environ, "MACHINES_LOCAL_BRIDGE": test_bridge.name, "MACHINES_LOCAL_SUBNET": test_bridge.subnet}
    env.pop("MACHINES_DRIVER", None)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return machines(store, *args, check=check, env=env)

    run.store = store  # type: ignore[attr-defined]
    yield run
    names = [path.name for path in (store / "machines").iterdir()] if (store / "machines").is_dir() else []
    if names:
        run("rm", "-f", "-y", *names, check=False)


def _host(cli: Cli, name: str) -> IsolatedHost:
    return IsolatedHost(str(cli.store / "machines" / name / "host"))  # type: ignore[attr-defined]


def _states(cli: Cli) -> dict[str, str]:
    return dict(line.split() for line in cli("ls", "--format", "{name} {state}").stdout.splitlines())


def test_three_local_hosts_from_create_to_rm(cli: Cli) -> None:
    tag = f"{os.getpid() % 1000}{uuid.uuid4().hex[:4]}"
    a, b, c = f"a{tag}", f"b{tag}", f"c{tag}"
    cli("create", "--no-provision", a, b, c)  # the default driver is local
    assert _states(cli) == {a: "Running", b: "Running", c: "Running"}
    assert cli("ssh", a, "hostname").stdout == f"{a}\n"
    cli("scp", f"{a}:/etc/hostname", f"{b}:/tmp/x")
    assert cli("ssh", b, "cat /tmp/x && cp /tmp/x /root/x").stdout == f"{a}\n"

    first = _host(cli, c).pid
    cli("stop", b)
    cli("kill", a)
    cli("restart", c)
    assert _states(cli) == {a: "Stopped", b: "Stopped", c: "Running"}
    assert _host(cli, a).pid is None and _host(cli, b).pid is None
    assert _host(cli, c).pid not in (None, first)  # a new sshd, not the old one
    cli("start", a, b)
    assert _states(cli) == {a: "Running", b: "Running", c: "Running"}
    assert cli("ssh", b, "cat /root/x; ls /tmp").stdout == f"{a}\n"  # files persist over stop/start, /tmp not

    footprint: dict[str, tuple] = {}
    for name in (a, b, c):
        host = _host(cli, name)
        footprint[name] = (host.record, TestHost(host, Path()).namespaces())
    cli("rm", "-y", a, b, c)
    assert list((cli.store / "machines").iterdir()) == []  # type: ignore[attr-defined]
    for name, (record, namespaces) in footprint.items():
        assert leftovers(record, namespaces) == [], name
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not any(record.netns in netns or record.veth in links for record, _ in footprint.values())


def test_bad_local_flags_are_refused_before_anything_is_made(cli: Cli) -> None:
    name = f"x{os.getpid() % 1000}{uuid.uuid4().hex[:4]}"
    result = cli("create", "--no-provision", "--local-subnet", "10.213.0.1/99", name, check=False)
    assert result.returncode != 0 and "invalid subnet" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (cli.store / "machines" / name).exists()  # type: ignore[attr-defined]
