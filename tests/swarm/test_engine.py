"""``machines create --engine docker`` on a generic host: a Docker Engine already there is adopted (never
reinstalled), a host without one gets it from its package manager, and provision, upgrade, regenerate-certs, env,
env --ssh and ls work for it. The test hosts show the machine's Debian ``docker.io`` through their copy-on-write
root; they have no package mirror, so the package manager is a stub that records how it was called.
"""

from __future__ import annotations

import json

from tests.support.hosts import HostFactory, TestHost
from tests.swarm.conftest import ENGINE_FLAGS, Fleet

# Records its arguments; for "install", makes the hidden dockerd appear, as installing docker.io would.
STUB_APT = """#!/bin/sh
echo "$@" >> /tmp/apt-calls
case "$*" in *install*docker.io*) umount /usr/sbin/dockerd 2>/dev/null ;; esac
exit 0
"""


def _generic(fleet: Fleet, host: TestHost, name: str, *extra: str) -> None:
    fleet("create", "-d", "generic", "--generic-ip-address", host.address, "--generic-ssh-key", str(host.key_path),
          "--timeout-ssh", "20", *ENGINE_FLAGS, *extra, name)


def _stub_apt(host: TestHost) -> None:
    host.run(f"cat > /usr/local/sbin/apt-get <<'EOF'\n{STUB_APT}EOF\nchmod 755 /usr/local/sbin/apt-get")


def _server_version(fleet: Fleet, env_args: str) -> str:
    return fleet.docker(env_args, "docker version --format '{{.Server.Version}}'").stdout.decode().strip()


def test_an_installed_docker_engine_is_adopted_not_reinstalled(fleet: Fleet, test_host: HostFactory) -> None:
    host = test_host()
    _stub_apt(host)
    name = fleet.name("adopt")
    _generic(fleet, host, name, "--engine-label", "tier=edge")
    assert host.run("cat /tmp/apt-calls", check=False).stdout == ""  # no package manager call at all
    record = json.loads(fleet("inspect", name).stdout)
    assert record["runtime"]["adopted"] is True and record["runtime"]["package"] == "docker.io"
    version = record["runtime"]["version"]
    assert fleet("ls", "--format", "{name} {engine} {runtime}").stdout == f"{name} docker docker-{version}\n"

    # The real docker CLI over mutual TLS on 2376, then over SSH: the same engine, configured as ours.
    assert _server_version(fleet, name) == version
    info = json.loads(fleet.docker(name, "docker info --format '{{json .}}'").stdout)
    assert info["DockerRootDir"] == "/data/docker" and "tier=edge" in info["Labels"]
    assert _server_version(fleet, f"--ssh {name}") == version
    fleet("env", "--ssh", "--unset", name)
    assert "API listen on" in fleet("logs", "-n", "200", name).stdout  # dockerd's own log, not our runtime's

    # provision again changes nothing; regenerate-certs issues a new certificate and TLS still works.
    pid = host.run("cat /var/run/docker.pid").stdout
    fleet("provision", name)
    assert host.run("cat /var/run/docker.pid").stdout == pid
    certificate = (fleet.store / "machines" / name / "server.pem").read_bytes()
    fleet("regenerate-certs", "-f", name)
    assert (fleet.store / "machines" / name / "server.pem").read_bytes() != certificate
    assert _server_version(fleet, name) == version

    # upgrade is a package upgrade of the package that owns dockerd, then a restart.
    upgraded = fleet("upgrade", name)
    assert "install -y -q --only-upgrade docker.io" in host.run("cat /tmp/apt-calls").stdout
    assert "already the newest" in upgraded.stderr
    assert _server_version(fleet, name) == version
    fleet("rm", "-y", name)  # generic: the host stays, the engine keeps running on it as the user's


def test_a_host_without_docker_engine_gets_it_from_its_package_manager(fleet: Fleet, test_host: HostFactory) -> None:
    host = test_host()
    host.run("mount --bind /dev/null /usr/sbin/dockerd")  # a host without Docker Engine
    _stub_apt(host)
    name = fleet.name("inst")
    _generic(fleet, host, name)
    assert "install -y -q --no-install-recommends docker.io" in host.run("cat /tmp/apt-calls").stdout
    record = json.loads(fleet("inspect", name).stdout)
    assert record["runtime"]["adopted"] is False and record["runtime"]["engine"] == "docker"
    assert _server_version(fleet, name) == record["runtime"]["version"]
    fleet("rm", "-y", name)


def test_bad_engine_and_swarm_flags_are_usage_errors(fleet: Fleet) -> None:
    refused = fleet("swarm", "init", "nosuchmachine", check=False)
    assert refused.returncode == 4 and "nosuchmachine" in refused.stderr  # not found
    bare = fleet.name("bare")  # a machine without Docker Engine (ours would say the same)
    fleet("create", "--no-provision", bare)
    refused = fleet("swarm", "init", bare, check=False)
    assert refused.returncode == 1 and "does not run Docker Engine" in refused.stderr
    fleet("rm", "-y", bare)
    bad = fleet("create", "--engine", "podman", "x", check=False)
    assert bad.returncode == 2 and "--engine must be 'machines' or 'docker'" in bad.stderr
    role = fleet("create", "--engine", "docker", "--swarm-manager", "m", "--swarm-role", "boss", "x", check=False)
    assert role.returncode == 2 and "--swarm-role must be 'worker' or 'manager'" in role.stderr
