"""The local driver end to end: create provisions a runtime the real clients reach (TLS env, ssh://), stop/start
brings it back (the supervised daemon dies with the host), rm leaves nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import docker
import pytest
from bootstrap_hosts import DOCKER, cli, shell, ssh_wrapper, unique

from machines import Machines, runtime
from machines.drivers.nshost import Bridge

VERSION_FORMAT = "{{.Server.Version}}"


def test_local_machine_lifecycle_with_the_real_clients(
    store: Machines, test_bridge: Bridge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("loc")
    cli(store, "create", "-d", "local", "--local-bridge", test_bridge.name, "--local-subnet", test_bridge.subnet, name)
    machine = store.get(name)
    assert machine.runtime["data_root"] == "/data/runtime" and machine.runtime["service"] == "supervisor"

    result = shell(store, f'eval "$(machines env {name})" && docker version --format "{VERSION_FORMAT}"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == runtime.VERSION

    for key in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests would let them override DOCKER_CERT_PATH
        monkeypatch.delenv(key, raising=False)
    environment = {
        "DOCKER_HOST": f"tcp://{machine.ip()}:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(machine.dir)
    }  # fmt: skip
    client = docker.from_env(environment=environment)
    try:
        assert client.version()["Version"] == runtime.VERSION
    finally:
        client.close()

    # DOCKER_HOST=ssh://: the docker CLI runs `docker system dial-stdio` on the host over the real ssh client.
    wrapper = ssh_wrapper(tmp_path, f"{machine.ip()} {machine.record['ssh_host_key']}", machine.key_path)
    over_ssh = subprocess.run(
        [DOCKER, "-H", f"ssh://root@{machine.ip()}", "version", "--format", VERSION_FORMAT],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{wrapper}:{os.environ['PATH']}", "DOCKER_HOST": ""},
    )  # fmt: skip
    assert over_ssh.returncode == 0, over_ssh.stderr
    assert over_ssh.stdout.strip() == runtime.VERSION

    store.stop(name)
    store.start(name)  # the host booted without our daemon: start's hook brings it back
    over_tls = subprocess.run(
        [DOCKER, "version", "--format", VERSION_FORMAT],
        capture_output=True, text=True, timeout=60, env={**os.environ, **environment},
    )  # fmt: skip
    assert over_tls.returncode == 0, over_tls.stderr

    cli(store, "rm", "-f", name)
    assert not store.store.exists(name)
