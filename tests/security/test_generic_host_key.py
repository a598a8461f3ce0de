"""The generic driver pins the host key it is given (flag or known_hosts) and refuses another; else it prints the
fingerprint it trusted on first use. Real sshd test hosts; ``ssh-keygen`` is the oracle for fingerprints and hashing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import paramiko
import pytest

from tests.security.hostile_sftp import HostileServer, folder
from tests.support.cli import machines
from tests.support.hosts import HostFactory, TestHost, write_key_pair


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose HOME is a fresh folder with an empty ``.ssh``: the user's known_hosts is the test's."""
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    return {**os.environ, "HOME": str(tmp_path / "home")}


def _create_at(store: Path, env: dict[str, str], address: str, port: int, key: Path,
               *flags: str) -> subprocess.CompletedProcess[str]:
    return machines(store, "create", "-d", "generic", "--generic-ip-address", address, "--generic-ssh-port", str(port),
                    "--generic-ssh-key", str(key), *flags, "--no-provision", "--timeout-ssh", "20", "pinned",
                    check=False, env=env)


def _create(store: Path, host: TestHost, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return _create_at(store, env, host.address, host.port, host.key_path, *flags)


def _openssh_fingerprint(key_line: str, folder: Path) -> str:
    path = folder / "key.pub"
    path.write_text(key_line + "\n")
    return subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout.split()[1]


def _recorded_key(store: Path) -> str:
    return json.loads((store / "machines" / "pinned" / "config.json").read_text())["ssh_host_key"]


def _refused_and_forgotten(result: subprocess.CompletedProcess[str], store: Path) -> None:
    assert result.returncode == 1
    assert "host key of pinned" in result.stderr and "refusing to connect" in result.stderr
    assert not (store / "machines" / "pinned").exists()
    assert machines(store, "ls", "-q").stdout == ""


def test_a_given_key_is_pinned_and_another_refused(test_host: HostFactory, tmp_path: Path, home: dict[str, str]) -> None:
    host, other = test_host(), test_host()
    store = tmp_path / "store"

    impostor = _create(store, host, home, "--generic-ssh-host-key", other.host_public_key)
    _refused_and_forgotten(impostor, store)

    key_file = tmp_path / "host-key"
    key_file.write_text(f"# from ssh-keyscan\n{host.known_hosts_line()}\n")
    result = _create(store, host, home, "--generic-ssh-host-key", str(key_file))
    assert result.returncode == 0, result.stderr
    assert "first use" not in result.stderr
    assert _recorded_key(store).split() == host.host_public_key.split()[:2]
    assert machines(store, "ssh", "pinned", "hostname").stdout == f"{host.name}\n"


def test_a_value_holding_no_key_is_refused(test_host: HostFactory, tmp_path: Path, home: dict[str, str]) -> None:
    host = test_host()
    store = tmp_path / "store"
    empty = tmp_path / "empty"
    empty.write_text("# nothing here\n")
    for value in ("ssh-ed25519 not-base64!", str(empty), "@revoked * " + host.host_public_key):
        result = _create(store, host, home, "--generic-ssh-host-key", value)
        assert result.returncode == 3, result.stderr
        assert "holds no SSH public key" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (store / "machines" / "pinned").exists()


def test_known_hosts_hashed_entries_pin_the_key(test_host: HostFactory, tmp_path: Path, home: dict[str, str]) -> None:
    host, other = test_host(), test_host()
    store = tmp_path / "store"
    known_hosts = Path(home["HOME"], ".ssh", "known_hosts")
    known_hosts.write_text(f"{host.address} {other.host_public_key}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(known_hosts)], capture_output=True, check=True)
    assert host.address not in known_hosts.read_text()  # hashed, as OpenSSH's HashKnownHosts writes them

    _refused_and_forgotten(_create(store, host, home), store)

    known_hosts.write_text(f"{host.address} {host.host_public_key}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(known_hosts)], capture_output=True, check=True)
    result = _create(store, host, home)
    assert result.returncode == 0, result.stderr
    assert "first use" not in result.stderr
    assert _recorded_key(store).split() == host.host_public_key.split()[:2]


def test_known_hosts_port_form_pins_the_key(tmp_path: Path, home: dict[str, str]) -> None:
    key_path, _ = write_key_pair(tmp_path / "login")
    server, wrong = HostileServer(key_path, folder({})), paramiko.ECDSAKey.generate()
    store = tmp_path / "store"
    known_hosts = Path(home["HOME"], ".ssh", "known_hosts")
    try:
        # The bare address with the right key does not count for another port; [address]:port with a wrong key refuses.
        known_hosts.write_text(f"127.0.0.1 {server.host_key_line}\n"
                               f"[127.0.0.1]:{server.port} {wrong.get_name()} {wrong.get_base64()}\n")
        refused = _create_at(store, home, "127.0.0.1", server.port, key_path)
        _refused_and_forgotten(refused, store)

        known_hosts.write_text(f"[127.0.0.1]:{server.port} {server.host_key_line}\n")
        result = _create_at(store, home, "127.0.0.1", server.port, key_path)
        assert result.returncode == 0, result.stderr
        assert "first use" not in result.stderr and _recorded_key(store) == server.host_key_line
    finally:
        server.close()


def test_trust_on_first_use_prints_the_fingerprint(test_host: HostFactory, tmp_path: Path, home: dict[str, str]) -> None:
    host = test_host()
    store = tmp_path / "store"

    result = _create(store, host, home)

    assert result.returncode == 0, result.stderr
    expected = _openssh_fingerprint(host.host_public_key, tmp_path)
    assert f"trusted the host key on first use: ED25519 key fingerprint is {expected}" in result.stderr
