"""One runtime daemon per test worker, on a unix socket and on mutual-TLS TCP, driven by the real docker clients.

A pytest plugin loaded for every area by ``tests/conftest.py``: the ``daemon``, ``image`` and ``name`` fixtures of the
API tests (``tests/api``) and of the attacks on the API (``tests/security``); ask for them by name, import nothing. The
helpers (``Daemon``, ``make_pki``, ``start_daemon``, ``stop_daemon``, ...) are for tests that start daemons of their own.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import busybox
from tests.support.cli import DOCKER

REPO = Path(__file__).resolve().parents[2]
COMPOSE = "/usr/bin/docker-compose"
TAG = uuid.uuid4().hex[:6]


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _certificate(subject: str, issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
                 key: ec.EllipticCurvePrivateKey, *, ca: bool = False, server: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path, prefix: str = "") -> dict[str, Path]:
    """A CA, a server cert for 127.0.0.1 and a client cert, laid out as DOCKER_CERT_PATH expects."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(prefix + "test CA", ca_key, None, ca_key, ca=True)
    paths = {"ca": folder / "ca.pem"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(prefix + role, ca_key, ca_cert.subject, key, server=role == "server")
        paths[role + "-cert"] = folder / ("cert.pem" if role == "client" else "server-cert.pem")
        paths[role + "-key"] = folder / ("key.pem" if role == "client" else "server-key.pem")
        paths[role + "-cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, paths[role + "-key"])
    return paths


class Daemon:
    """A running daemon and helpers to drive it with the docker CLI."""

    def __init__(self, root: Path, process: subprocess.Popen, socket_path: Path, tcp: str, pki: dict[str, Path],
                 bridge: str, log: Path) -> None:
        self.root = root
        self.process = process
        self.socket_path = socket_path
        self.tcp = tcp
        self.pki = pki
        self.bridge = bridge
        self.log = log
        self.host = f"unix://{socket_path}"
        self.config = root / "docker-config"
        self.config.mkdir(exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
        env.update({"DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.config), "DOCKER_BUILDKIT": "0"})
        env.update(extra)
        return env

    def docker(self, *args: str, input: bytes | None = None, timeout: float = 60,
               check: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([DOCKER, *args], input=input, capture_output=True, timeout=timeout,
                                env=env or self.env())
        if check and result.returncode != 0:
            raise AssertionError(f'docker {" ".join(args)} failed ({result.returncode}): {result.stderr.decode(errors="replace")}')
        return result

    def out(self, *args: str, **kwargs) -> str:
        """stdout of a docker command that must succeed."""
        return self.docker(*args, check=True, **kwargs).stdout.decode()

    def alive(self) -> bool:
        return self.process.poll() is None


def wait_for_listen(log: Path, process: subprocess.Popen, deadline: float) -> str:
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = re.search(r"listening on (.*)", text)
        if found:
            return found.group(1)
        if process.poll() is not None:
            raise RuntimeError("daemon exited early:\n" + text)
        time.sleep(0.05)
    raise RuntimeError("daemon did not start:\n" + log.read_text(errors="replace"))


def start_daemon(root: Path, extra: list[str]) -> subprocess.Popen:
    log = root / "daemon.log"
    return subprocess.Popen([sys.executable, "-m", "machines.runtime", "daemon", "--data-root", str(root / "data"),
                             "--exec-root", str(root / "exec"), "--pidfile", str(root / "daemon.pid"), *extra],
                            cwd=str(REPO), stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_daemon(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def free_subnet(second_octet: int) -> str:
    """A ``10.<second_octet>.N.0/24`` no route of the host uses yet, starting from one that depends on our pid, so
    parallel workers (and the other areas' bridges) do not collide."""
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    for attempt in range(250):
        candidate = f"10.{second_octet}.{(os.getpid() + attempt) % 250}."
        if candidate not in routes:
            return candidate + "0/24"
    raise RuntimeError(f"no free 10.{second_octet}.N.0/24 subnet")


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Daemon:
    root = tmp_path_factory.mktemp("api-daemon")
    pki = make_pki(root / "pki")
    socket_path = root / "docker.sock"
    pid = os.getpid()
    bridge = f"apib{pid % 100000}"
    subnet = free_subnet(198)
    process = start_daemon(root, [
        "--host", f"unix://{socket_path}", "--host", "tcp://127.0.0.1:0", "--tlsverify",
        "--tlscacert", str(pki["ca"]), "--tlscert", str(pki["server-cert"]), "--tlskey", str(pki["server-key"]),
        "--bridge-subnet", subnet, "--bridge-name", bridge])
    log = root / "daemon.log"
    try:
        listening = wait_for_listen(log, process, time.monotonic() + 30).split()
    except Exception:
        stop_daemon(process)
        raise
    tcp = next(item for item in listening if item.startswith("tcp://"))
    instance = Daemon(root, process, socket_path, tcp, pki, bridge, log)
    yield instance
    try:
        if instance.alive():
            ids = instance.docker("ps", "-aq").stdout.split()
            if ids:
                instance.docker("rm", "-f", *[item.decode() for item in ids], timeout=120)
            instance.docker("network", "prune", "-f")
    finally:
        stop_daemon(process)
        left = link_exists(bridge)  # kept while the daemon ran (as docker0), removed when it stopped
        if left:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    assert not left, f"the stopped daemon left its bridge {bridge}"


@pytest.fixture(scope="session")
def image(daemon: Daemon) -> str:
    """A busybox image made by ``docker import`` of a busybox-static root filesystem."""
    name = "apitest/busybox:latest"
    daemon.out("import", "-", name, input=busybox.rootfs())
    return name


@pytest.fixture
def name() -> str:
    """A container or object name unique to the test."""
    return f"api-{TAG}-{uuid.uuid4().hex[:8]}"

