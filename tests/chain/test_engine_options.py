"""Issue 14: engine options given at create reach the daemon and are seen through the real docker CLI, and survive
``machines provision`` and ``machines upgrade``.

Registries are Debian's docker-registry: a plain-HTTP one on the test bridge's address (a non-loopback insecure
registry), a TLS one on that address reached through a CONNECT proxy of this test, and a pull-through cache on
loopback mirroring another loopback registry (Docker Hub's stand-in: ``busybox:TAG`` pulls go to the mirror).
Loopback services reach the host through remote forwards of the machine's SSH connection.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from machines.bootstrap import certs
from machines.drivers.nshost import Bridge
from machines.machine import Machines
from tests.chain.test_build_push_pull import docker_on
from tests.support.cli import busybox_rootfs, machines
from tests.support.hosts import unique_name
from tests.support.registry import Registry, start_registry

BIP = "172.31.213.1/24"


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback that relays tunnels and records every request line it was sent."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode()
            self.seen.append(line)
            method, target, _ = line.split(" ", 2)
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, _, port = target.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                sockets = [client, upstream]
                while True:
                    readable, _, _ = select.select(sockets, [], [], 30)
                    if not readable:
                        return
                    for source in readable:
                        data = source.recv(65536)
                        if not data:
                            return
                        (upstream if source is client else client).sendall(data)

    def close(self) -> None:
        self._closed.set()
        self.server.close()


@pytest.fixture
def registries(tmp_path: Path, test_bridge: Bridge) -> Iterator[dict[str, Registry]]:
    """upstream + its mirror on loopback; plain (HTTP) and secure (TLS, test CA) on the bridge's address."""
    gateway = str(test_bridge.gateway)
    ca = certs.ensure_store_certs(tmp_path / "ca")
    (tmp_path / "tls").mkdir()
    cert, key = certs.issue_server_cert(ca, tmp_path / "tls", "registry", [gateway])
    made: dict[str, Registry] = {}
    try:
        made["upstream"] = start_registry(str(tmp_path / "upstream"))
        made["mirror"] = start_registry(str(tmp_path / "mirror"), proxy_for=f"http://{made['upstream'].host}")
        made["plain"] = start_registry(str(tmp_path / "plain"), address=gateway)
        made["secure"] = start_registry(str(tmp_path / "secure"), address=gateway, tls=(str(cert), str(key)))
        made["ca"] = ca.ca_cert  # type: ignore[assignment]
        yield made
    finally:
        for registry in made.values():
            if isinstance(registry, Registry):
                registry.stop()


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    server = ConnectProxy()
    yield server
    server.close()


def _port(registry: Registry) -> int:
    return int(registry.host.rsplit(":", 1)[1])


def _info(store: Path, name: str) -> dict:
    return json.loads(docker_on(store, name, "info --format '{{json .}}'"))


def _check_engine(store: Path, name: str, registries: dict[str, Registry], proxy: ConnectProxy, round_: str) -> None:
    """Every option at work: labels, the bridge subnet, the insecure, mirrored and proxied pulls."""
    info = _info(store, name)
    assert {"team=infra", "tier=edge"} <= set(info["Labels"]), info["Labels"]
    assert info["HttpsProxy"] == f"http://127.0.0.1:{proxy.port}"
    assert registries["plain"].host in info["RegistryConfig"]["IndexConfigs"]
    assert info["RegistryConfig"]["Mirrors"] == [f"http://{registries['mirror'].host}/"]
    assert info["LoggingDriver"] == "local"
    container = docker_on(store, name, "create busybox true").strip()
    log_config = json.loads(docker_on(store, name, f"inspect -f '{{{{json .HostConfig.LogConfig}}}}' {container}"))
    assert log_config == {"Type": "local", "Config": {"max-size": "5m"}}
    docker_on(store, name, f"rm {container}")
    assert "nameserver 192.0.2.53" in docker_on(store, name, "run --rm busybox cat /etc/resolv.conf")
    network = json.loads(docker_on(store, name, "network inspect bridge --format '{{json .IPAM.Config}}'"))
    assert network == [{"Subnet": "172.31.213.0/24", "Gateway": "172.31.213.1"}]
    address = docker_on(store, name, "run --rm busybox ip -4 -o addr show eth0")
    assert " inet 172.31.213." in address, address

    plain = f"{registries['plain'].host}/opts/plain:{round_}"  # plain HTTP on a non-loopback address
    docker_on(store, name, f"tag busybox {plain}")
    docker_on(store, name, f"push {plain}")
    docker_on(store, name, f"rmi {plain}")
    docker_on(store, name, f"pull {plain}")

    secure = f"{registries['secure'].host}/opts/secure:{round_}"  # TLS, through the CONNECT proxy
    before = len(proxy.seen)
    docker_on(store, name, f"tag busybox {secure}")
    docker_on(store, name, f"push {secure}")
    docker_on(store, name, f"rmi {secure}")
    docker_on(store, name, f"pull {secure}")
    tunnels = proxy.seen[before:]
    assert tunnels and all(line.startswith(f"CONNECT {registries['secure'].host} HTTP/1.") for line in tunnels), tunnels

    upstream = f"{registries['upstream'].host}/library/busybox:{round_}"  # Docker Hub's name, served by the mirror
    docker_on(store, name, f"tag busybox {upstream}")
    docker_on(store, name, f"push {upstream}")
    docker_on(store, name, f"rmi {upstream}")
    pulled = docker_on(store, name, f"pull busybox:{round_}")
    assert f"docker.io/library/busybox:{round_}" in pulled, pulled
    cached = Path(registries["mirror"].data, "docker/registry/v2/repositories/library/busybox")
    assert cached.is_dir(), "the mirror did not serve the pull"
    docker_on(store, name, f"rmi busybox:{round_}")


@pytest.mark.timeout(900)  # three rounds of pushes and pulls through four registries and a proxy on a busy machine
def test_engine_options_reach_the_daemon_and_survive_provision_and_upgrade(
    store: Path, test_bridge: Bridge, registries: dict[str, Registry], proxy: ConnectProxy, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = unique_name("eo")
    machines(store, "create", "-d", "local", "--local-bridge", test_bridge.name, "--local-subnet",
             test_bridge.subnet, "--engine-label", "team=infra", "--engine-label", "tier=edge",
             "--engine-opt", f"bip={BIP}", "--engine-insecure-registry", registries["plain"].host,
             "--engine-registry-mirror", f"http://{registries['mirror'].host}",
             "--engine-env", f"HTTPS_PROXY=http://127.0.0.1:{proxy.port}", "--engine-opt", "log-driver=local",
             "--engine-opt", "log-opts=max-size=5m", "--engine-opt", "dns=192.0.2.53", name)
    machine = Machines(store).get(name)
    try:
        connection = machine.ssh()
        for port in (_port(registries["upstream"]), _port(registries["mirror"]), proxy.port):
            assert connection.request_remote_forward(port, "127.0.0.1", port) == port
        ca_folder = f"/etc/docker/certs.d/{registries['secure'].host}"
        connection.run(f"mkdir -p {ca_folder}", sudo=True)
        connection.put_bytes(Path(registries["ca"]).read_bytes(), f"{ca_folder}/ca.crt", 0o644)  # type: ignore[arg-type]
        docker_on(store, name, "import - busybox", stdin=busybox_rootfs())

        _check_engine(store, name, registries, proxy, "create")
        # Builds get the daemon's proxies as Docker's predefined ARGs: seen by RUN, kept out of the history.
        monkeypatch.setenv("DOCKER_BUILDKIT", "0")
        context = tmp_path / "context"
        context.mkdir()
        (context / "Dockerfile").write_text("FROM busybox\nRUN echo \"proxy=$HTTPS_PROXY\" > /proxy\n")
        docker_on(store, name, f"build -t proxied {context}")
        assert docker_on(store, name, "run --rm proxied cat /proxy") == f"proxy=http://127.0.0.1:{proxy.port}\n"
        assert "127.0.0.1" not in docker_on(store, name, "history --no-trunc proxied")
        machines(store, "provision", name)
        _check_engine(store, name, registries, proxy, "provision")
        machines(store, "upgrade", name)
        _check_engine(store, name, registries, proxy, "upgrade")
        config = connection.run("stat -c %a /etc/machines/daemon.json /etc/machines/daemon.env", sudo=True).stdout
        assert config.split() == ["600", "600"]  # proxy passwords would be in them
    finally:
        machine.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--engine-opt", "frobnicate=1"], "the following directives don't match any configuration option: frobnicate"),
        (["--engine-opt", "fixed-cidr=10.1.0.0/24"], "not supported by the machines runtime: fixed-cidr"),
        (["--engine-opt", "default-address-pools=base=10.9.0.0/16,size=31"], "size 31 does not fit in 10.9.0.0/16"),
        (["--engine-opt", "mtu=9"], "the MTU must be between 68 and 65535"),
        (["--engine-opt", "labels=a=b"], "--engine-opt labels is set with --engine-label"),
        (["--engine-insecure-registry", "http://10.0.0.1:5000"], "should not contain '://'"),
        (["--engine-registry-mirror", "ftp://mirror"], "unsupported scheme 'ftp'"),
        (["--engine-registry-mirror", "https://mirror/some/path"], "path, query, or fragment"),
        (["--engine-env", "BAD-NAME=1"], "is not a variable name"),
        (["--engine-label", "novalue"], "expected KEY=VALUE"),
        (["--engine-proxy", "manual"], "--engine-proxy takes 'auto'"),
    ],
)
def test_bad_engine_options_are_refused_before_anything_is_made(store: Path, flags: list[str], message: str) -> None:
    result = machines(store, "create", "-d", "local", *flags, "never", check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (store / "machines" / "never").exists()


def test_engine_proxy_auto_copies_this_computers_proxy_variables(store: Path, test_bridge: Bridge) -> None:
    name = unique_name("ep")
    env = {**os.environ, "HTTPS_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "10.0.0.0/8,.internal"}
    env.pop("HTTP_PROXY", None)
    env.pop("http_proxy", None)
    machines(store, "create", "-d", "local", "--local-bridge", test_bridge.name, "--local-subnet",
             test_bridge.subnet, "--engine-proxy", "auto", "--engine-env", "NO_PROXY=.example.com", name, env=env)
    info = _info(store, name)
    assert info["HttpsProxy"] == "http://proxy.invalid:3128" and info["HttpProxy"] == ""
    assert info["NoProxy"] == ".example.com"  # --engine-env wins over the copied variable


def test_set_changes_a_running_machine_keeps_its_containers_and_rolls_back_a_broken_option(
    store: Path, test_bridge: Bridge
) -> None:
    name = unique_name("es")
    machines(store, "create", "-d", "local", "--local-bridge", test_bridge.name, "--local-subnet",
             test_bridge.subnet, "--engine-label", "team=infra", name)
    docker_on(store, name, "import - busybox", stdin=busybox_rootfs())
    container = docker_on(store, name, "run -d busybox sleep 600").strip()
    started = docker_on(store, name, f"inspect -f '{{{{.State.StartedAt}}}}' {container}")

    plan = machines(store, "set", name, "--dry-run", "--engine-label", "team=web", "--engine-insecure-registry",
                    "10.9.9.9:5000").stdout
    assert "engine labels: ['team=infra'] -> ['team=web']" in plan and "insecure registries: [] -> ['10.9.9.9:5000']" in plan
    assert _info(store, name)["Labels"] == ["team=infra"]  # a dry run changes nothing

    machines(store, "set", name, "--engine-label", "team=web", "--engine-insecure-registry", "10.9.9.9:5000",
             "--engine-env", "HTTP_PROXY=http://user:s3cret@127.0.0.1:9")
    assert "s3cret" not in machines(store, "inspect", name).stdout
    assert _info(store, name)["HttpProxy"] == "http://user:xxxxx@127.0.0.1:9"  # as dockerd masks it
    info = _info(store, name)
    assert info["Labels"] == ["team=web"] and "10.9.9.9:5000" in info["RegistryConfig"]["IndexConfigs"]
    assert docker_on(store, name, f"inspect -f '{{{{.State.StartedAt}}}}' {container}") == started  # never restarted
    assert machines(store, "set", name, "--dry-run").stdout == f"{name}: nothing to change\n"

    machines(store, "set", name, "--tls-san", "web.example.test")  # a new server certificate, installed
    assert "web.example.test" in certs.cert_sans(store / "machines" / name / certs.SERVER_CERT)
    assert docker_on(store, name, "info --format '{{json .Labels}}'").strip() == '["team=web"]'  # TLS still verifies

    broken = machines(store, "set", name, "--engine-label", "broken=yes", "--engine-opt", "bip=172.31.99.1/31",
                      check=False)
    assert broken.returncode != 0 and "the previous options were put back" in broken.stderr, broken.stderr
    assert "too small" in broken.stderr  # the daemon's own reason
    assert _info(store, name)["Labels"] == ["team=web"]
    assert Machines(store).get(name).host_options.labels == ("team=web",)
    assert docker_on(store, name, f"inspect -f '{{{{.State.Running}}}} {{{{.State.StartedAt}}}}' {container}") == \
        f"true {started}"

    refused = machines(store, "set", name, "--local-bridge", "other0", check=False)
    assert refused.returncode != 0 and "the local driver cannot change --local-bridge after create" in refused.stderr
