"""``machines share`` gives someone a client certificate of their own from the store CA; ``machines revoke`` takes
it back through the revocation list the runtime receives at provision and re-reads without a restart."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from machines.drivers.nshost import Bridge
from tests.chain.test_import_docker_machine import _docker_machine_store
from tests.reach.conftest import create_generic
from tests.support.cli import DOCKER, machines
from tests.support.hosts import HostFactory, unique_name


def _docker_with(folder: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("DOCKER_") and key not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env.update(DOCKER_HOST=url, DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(folder), DOCKER_CONFIG=str(folder / "cfg"))
    return subprocess.run([DOCKER, "version", "--format", "{{.Server.Os}}"], capture_output=True, text=True,
                          timeout=60, env=env)


def test_a_shared_certificate_works_until_revoked(test_host: HostFactory, tmp_path: Path) -> None:
    host = test_host()
    store = tmp_path / "store"
    create_generic(store, host)
    try:
        url = machines(store, "url", "web").stdout.strip()
        alice, bob = tmp_path / "alice", tmp_path / "bob"
        shown = machines(store, "share", "web", "--to", "alice", "--expires", "30d", "-o", str(alice)).stdout
        assert f"export DOCKER_CERT_PATH={alice}" in shown and f"export DOCKER_HOST={url}" in shown
        machines(store, "share", "web", "--to", "bob", "--expires", "2w", "-o", str(bob))
        assert sorted(path.name for path in alice.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
        assert (alice / "key.pem").stat().st_mode & 0o077 == 0
        assert not (alice / "ca-key.pem").exists()
        owner = store / "machines" / "web"
        assert (alice / "cert.pem").read_bytes() != (owner / "cert.pem").read_bytes()

        assert _docker_with(alice, url).stdout == "linux\n"
        assert _docker_with(bob, url).stdout == "linux\n"

        revoked = machines(store, "revoke", "web", "alice")
        assert "of alice" in revoked.stdout
        refused = _docker_with(alice, url)
        assert refused.returncode != 0 and refused.stdout.strip() == ""
        assert "tls: revoked certificate" in refused.stderr
        assert _docker_with(bob, url).stdout == "linux\n"  # only alice's certificate is revoked
        assert _docker_with(owner, url).stdout == "linux\n"  # and the owner's is untouched

        again = machines(store, "revoke", "web", "alice", check=False)
        assert again.returncode == 1 and "no certificate of web is shared with 'alice'" in again.stderr
        machines(store, "provision", "web")  # a later provision keeps the revocation
        assert "tls: revoked certificate" in _docker_with(alice, url).stderr
    finally:
        machines(store, "rm", "-y", "web")


def test_bad_share_requests_are_refused(test_host: HostFactory, tmp_path: Path) -> None:
    host = test_host()
    store = tmp_path / "store"
    create_generic(store, host, "--api", "ssh")
    try:
        for args, message in (
            (("share", "web", "--to", "alice"), "has no TLS API"),
            (("share", "web", "--to", "../x", "--expires", "1d"), "invalid user '../x'"),
            (("share", "web", "--to", "a", "--expires", "forever"), "invalid --expires 'forever'"),
            (("share", "web", "--to", "a", "--expires", "0d"), "invalid --expires '0d'"),
            (("revoke", "web", "nobody"), "no certificate of web is shared with 'nobody'"),
        ):
            result = machines(store, *args, check=False)
            assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1
    finally:
        machines(store, "rm", "-y", "web")


def test_docker_engine_machines_are_neither_shared_nor_revoked(test_bridge: Bridge, tmp_path: Path) -> None:
    """dockerd has no option to check a revocation list, so a certificate shared for it could never be taken back:
    share and revoke refuse a machine on Docker Engine (here one adopted from a Docker Machine store)."""
    store, host, adopted = tmp_path / "store", unique_name("sh"), unique_name("shd")
    machines(store, "create", "-d", "local", "--local-bridge", test_bridge.name, "--local-subnet", test_bridge.subnet,
             host)
    try:
        ip = machines(store, "ip", host).stdout.strip()
        _docker_machine_store(store, host, ip, tmp_path / "docker-machine", {adopted: "generic"})
        machines(store, "import-docker-machine", "--from", str(tmp_path / "docker-machine"), adopted)
        for args in (("share", adopted, "--to", "alice"), ("revoke", adopted, "alice")):
            result = machines(store, *args, check=False)
            assert result.returncode == 1 and "runs Docker Engine, which cannot check a revocation list" in \
                result.stderr, (args, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1
        assert not (store / "certs" / "shares.json").exists()  # nothing was issued
        shared = machines(store, "share", host, "--to", "bob", "-o", str(tmp_path / "bob"))  # adopted: trusts its own CA
        assert "export DOCKER_CERT_PATH=" in shared.stdout
    finally:
        machines(store, "rm", "-y", adopted, host)
