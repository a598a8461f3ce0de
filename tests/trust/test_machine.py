"""End to end on a real machine: ``machines create --engine-trust-policy`` installs the policy, ``docker pull`` and
``docker run`` through ``machines env`` honour it, and ``machines scan --machine`` reads the image from the machine."""

from __future__ import annotations

import io
import json
from pathlib import Path

from machines.drivers.nshost import Bridge
from machines.machine import Machines
from machines.runtime.images.service import ImageService
from machines.runtime.images.store import ImageStore
from tests.scan import fixtures
from tests.support.cli import DOCKER, machines, with_env
from tests.support.hosts import unique_name
from tests.support.registry import Registry
from tests.trust.conftest import run_machines

OSV_DB = Path(__file__).parents[1] / "scan" / "osv"


def _push_alpine_fixture(registry: Registry, tmp_path, name: str) -> str:
    service = ImageService(ImageStore(str(tmp_path / "work" / "image")))
    base, _ = fixtures.alpine_layers()
    image = f"{registry.host}/{name}"
    service.store.import_tar(io.BytesIO(base), image)
    list(service.push(image))
    return image


def _create_reaching(machines_store: Path, registry: Registry, bridge: Bridge, name: str, *flags: str) -> None:
    """A local machine that reaches the loopback registry at the same address (a remote forward of its SSH)."""
    machines(machines_store, "create", "-d", "local", "--local-bridge", bridge.name, "--local-subnet", bridge.subnet, *flags,
             name)
    port = int(registry.host.rsplit(":", 1)[1])
    assert Machines(machines_store).get(name).ssh().request_remote_forward(port, "127.0.0.1", port) == port


def test_policy_from_create_is_enforced_and_scan_reads_the_machine(machines_store, registry: Registry, keypair,
                                                                    test_bridge: Bridge, tmp_path):
    private, public, secret = keypair
    service = ImageService(ImageStore(str(tmp_path / "work" / "image")))
    base, _ = fixtures.alpine_layers()
    image = service.store.resolve(service.store.import_tar(io.BytesIO(base)))
    signed, unsigned = f"{registry.host}/signed/app:v1", f"{registry.host}/signed/app:v2"
    for number, name in enumerate((signed, unsigned)):
        upper = tmp_path / f"upper{number}"
        upper.mkdir()
        (upper / "n").write_text(str(number))
        service.store.commit(str(upper), image, None, name)
        list(service.push(name))
    assert run_machines("trust", "sign", signed, "--key", str(private), "--passphrase-file", str(secret)).code == 0
    policy = tmp_path / "policies" / "policy.json"
    policy.parent.mkdir()
    policy.write_text(json.dumps({
        "default": [{"type": "reject"}],
        "transports": {"docker": {f"{registry.host}/signed": [{"type": "sigstoreSigned", "keyPath": "../cosign.pub"}]},
                       "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}}}))

    name = unique_name("tr")
    _create_reaching(machines_store, registry, test_bridge, name, "--engine-trust-policy", str(policy))

    refused = with_env(machines_store, name, f"{DOCKER} pull {unsigned}")
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == (f"Error response from daemon: {unsigned}: Source image rejected: "
                                               "A signature was required, but no signature exists")
    pulled = with_env(machines_store, name, f"{DOCKER} pull {signed}")
    assert pulled.returncode == 0, pulled.stderr.decode()
    created = with_env(machines_store, name, f"{DOCKER} create {signed} /nothing-to-run")  # the run-time check passes
    assert created.returncode == 0, created.stderr.decode()
    assert with_env(machines_store, name, f"{DOCKER} rm {created.stdout.decode().strip()}").returncode == 0

    scanned = run_machines("--storage-path", str(machines_store), "scan", signed, "--machine", name, "--db", str(OSV_DB),
                           "--format", "json")
    assert scanned.code == 0, scanned.err
    report = json.loads(scanned.out)
    assert report["packages"] == 13
    assert "CVE-2022-27449" in {v["id"] for v in report["vulnerabilities"]}
    missing = run_machines("--storage-path", str(machines_store), "scan", "no/such:image", "--machine", name,
                           "--db", str(OSV_DB))
    assert missing.code == 1
    assert missing.err.strip() == f"Error: {name}: No such image: no/such:image"


def test_engine_scan_refuses_a_vulnerable_pull(machines_store, registry: Registry, test_bridge: Bridge,
                                               tmp_path):
    vulnerable = _push_alpine_fixture(registry, tmp_path, "scan/alpine:1")
    name = unique_name("sc")
    bad = machines(machines_store, "create", "-d", "local", "--engine-scan", "high", name, check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == "Error: --engine-scan and --engine-scan-db go together"
    _create_reaching(machines_store, registry, test_bridge, name, "--engine-scan", "high", "--engine-scan-db", str(OSV_DB))
    refused = with_env(machines_store, name, f"{DOCKER} pull {vulnerable}")
    assert refused.returncode == 1
    assert refused.stderr.decode().strip().endswith(
        f"{vulnerable}: refused by the engine's scan policy: 2 vulnerabilities at or above high: "
        "GHSA-35jh-r3h4-6jhm (high) in lodash 4.17.20, ALPINE-CVE-2025-26519 (high) in musl 1.2.3-r0")
    listed = with_env(machines_store, name, f"{DOCKER} images -q {vulnerable}")
    assert listed.returncode == 0 and listed.stdout == b""


def test_set_installs_a_trust_policy_on_a_running_machine(machines_store, registry: Registry, test_bridge: Bridge,
                                                          tmp_path):
    unsigned = _push_alpine_fixture(registry, tmp_path, "team/app:1")
    name = unique_name("ts")
    _create_reaching(machines_store, registry, test_bridge, name)
    assert with_env(machines_store, name, f"{DOCKER} pull {unsigned}").returncode == 0  # no policy: Docker's behaviour
    assert with_env(machines_store, name, f"{DOCKER} rmi {unsigned}").returncode == 0

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "reject"}]}))
    planned = machines(machines_store, "set", "--dry-run", "--engine-trust-policy", str(policy), name)
    assert "trust policy: installed" in planned.stdout.splitlines()
    machines(machines_store, "set", "--engine-trust-policy", str(policy), name)
    refused = with_env(machines_store, name, f"{DOCKER} pull {unsigned}")
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == (f"Error response from daemon: {unsigned}: Source image rejected: "
                                               f"Running image docker://{unsigned} is rejected by policy.")
