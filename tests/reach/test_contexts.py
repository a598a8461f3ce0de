"""Docker contexts written as ``docker context create`` writes them, used by the real ``docker --context``."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

from machines.drivers.nshost import Bridge
from tests.reach.conftest import Reachable, _make
from tests.support.cli import DOCKER


def _docker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=120, env=env)


def test_context_use_and_rm(test_bridge: Bridge, busybox_tar: bytes, reach_env: dict[str, str], tmp_path: Path) -> None:
    env = {**reach_env, "DOCKER_CONFIG": str(tmp_path / "docker")}
    machine = _make(tmp_path / "store", env, test_bridge, busybox_tar)
    name = machine.name
    try:
        assert machine.cli("context", name).stdout == f"{name}\n"
        folder = Path(env["DOCKER_CONFIG"]) / "contexts"
        digest = hashlib.sha256(name.encode()).hexdigest()
        meta = json.loads((folder / "meta" / digest / "meta.json").read_text())
        assert meta["Name"] == name and meta["Endpoints"]["docker"]["SkipTLSVerify"] is False
        assert meta["Endpoints"]["docker"]["Host"] == machine.cli("url", name).stdout.strip()
        for file_name in ("ca.pem", "cert.pem", "key.pem"):
            assert stat.S_IMODE((folder / "tls" / digest / "docker" / file_name).stat().st_mode) == 0o600

        listed = _docker(env, "context", "ls", "--format", "{{.Name}} {{.DockerEndpoint}}").stdout
        assert f"{name} {meta['Endpoints']['docker']['Host']}" in listed.splitlines()
        version = _docker(env, "--context", name, "version", "--format", "{{.Server.Os}}")
        assert version.stdout == "linux\n", version.stderr
        assert "reach-busybox" in _docker(env, "--context", name, "images").stdout

        assert machine.cli("use", name).stdout == f'Current context is now "{name}"\n'
        assert json.loads((Path(env["DOCKER_CONFIG"]) / "config.json").read_text())["currentContext"] == name
        assert _docker(env, "context", "show").stdout == f"{name}\n"
        assert "reach-busybox" in _docker(env, "images").stdout  # no --context, no DOCKER_HOST: the current one

        exports = machine.cli("env", "--context", "--shell", "bash", name).stdout
        assert f"export DOCKER_CONTEXT={name}" in exports and "unset DOCKER_HOST" in exports
        shown = subprocess.run(["bash", "-c", f"{exports}\n{DOCKER} context show"], capture_output=True, text=True,
                               env={**env, "DOCKER_HOST": "tcp://127.0.0.1:9"}, timeout=60)
        assert shown.stdout == f"{name}\n", shown.stderr

        machine.cli("rm", "-y", name)
        assert not (folder / "meta" / digest).exists() and not (folder / "tls" / digest).exists()
        assert "currentContext" not in json.loads((Path(env["DOCKER_CONFIG"]) / "config.json").read_text())
        assert _docker(env, "context", "show").stdout == "default\n"
    finally:
        machine.cli("rm", "-f", "-y", name, check=False)


def test_a_users_own_context_is_neither_overwritten_nor_removed(ssh_machine: Reachable, tmp_path: Path) -> None:
    env = {**ssh_machine.env, "DOCKER_CONFIG": str(tmp_path / "docker")}
    made = _docker(env, "context", "create", ssh_machine.name, "--docker", "host=tcp://127.0.0.1:9")
    assert made.returncode == 0, made.stderr
    refused = subprocess.run(
        [*_machines(ssh_machine), "context", ssh_machine.name], capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 1
    assert f"a docker context named {ssh_machine.name!r} exists and was not made by machines" in refused.stderr
    endpoint = _docker(env, "context", "inspect", ssh_machine.name, "--format", "{{.Endpoints.docker.Host}}")
    assert endpoint.stdout == "tcp://127.0.0.1:9\n"
    reserved = subprocess.run([*_machines(ssh_machine), "env", "--context", "default"], capture_output=True,
                              text=True, env=env, timeout=60)
    assert reserved.returncode != 0


def test_an_ssh_only_machine_gets_a_context_on_its_forwarded_socket(ssh_machine: Reachable, tmp_path: Path) -> None:
    env = {**ssh_machine.env, "DOCKER_CONFIG": str(tmp_path / "docker")}
    result = subprocess.run([*_machines(ssh_machine), "context", ssh_machine.name], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    host = _docker(env, "context", "inspect", ssh_machine.name, "--format", "{{.Endpoints.docker.Host}}").stdout
    assert host.startswith("unix://") and os.path.exists(host.strip().removeprefix("unix://"))
    assert "reach-busybox" in _docker(env, "--context", ssh_machine.name, "images").stdout


def _machines(machine: Reachable) -> list[str]:
    from tests.support.cli import MACHINES

    return [MACHINES, "--storage-path", str(machine.store)]
