"""Issue 6 through machines: build on one machine with the docker CLI, push to a registry, pull and run on another
with docker-py. The registry is on this machine's loopback; each host reaches it at the same ``127.0.0.1:PORT``
(an insecure-by-default loopback registry) through a remote port forward of its machine's SSH connection, since
test hosts have no other route."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import docker
import pytest

from machines.drivers.nshost import Bridge
from machines.machine import Machines
from tests.support.cli import DOCKER, busybox_rootfs, machines, with_env
from tests.support.hosts import unique_name
from tests.support.registry import Registry

DOCKERFILE = """FROM busybox AS maker
COPY message.txt /src/message.txt
RUN tr a-z A-Z < /src/message.txt > /greeting
FROM busybox
COPY --from=maker /greeting /greeting
CMD ["cat", "/greeting"]
"""
MESSAGE = "built on a, pulled on b\n"


def docker_on(store: Path, name: str, command: str, stdin: bytes | None = None) -> str:
    """The real docker CLI after ``eval "$(machines env NAME)"``; a non-zero exit fails the test with its stderr."""
    result = with_env(store, name, f"{DOCKER} {command}", stdin=stdin)
    assert result.returncode == 0, f"docker {command} on {name} exited {result.returncode}: {result.stderr.decode()}"
    return result.stdout.decode()


def env_of(store: Path, name: str) -> dict[str, str]:
    """The variables ``eval "$(machines env NAME)"`` sets, for docker-py's ``from_env``."""
    exports = machines(store, "env", "--shell", "bash", name).stdout.splitlines()
    return dict(shlex.split(line)[1].split("=", 1) for line in exports if line.startswith("export "))


def built_id(stream: str) -> str:
    match = re.search(r"^Successfully built ([0-9a-f]{12})$", stream, re.M)
    assert match, stream
    return match.group(1)


def test_build_on_a_push_pull_and_run_on_b(store: Path, registry: Registry, test_bridge: Bridge, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = unique_name("ca"), unique_name("cb")
    machines(store, "create", "-d", "local", "--local-bridge", test_bridge.name, "--local-subnet", test_bridge.subnet,
             a, b)
    port = int(registry.host.rsplit(":", 1)[1])
    image = f"127.0.0.1:{port}/chain/app:1"
    hosts = [Machines(store).get(name) for name in (a, b)]
    try:
        for machine in hosts:  # lives as long as the machine's shared connection, closed below
            assert machine.ssh().request_remote_forward(port, "127.0.0.1", port) == port

        monkeypatch.setenv("DOCKER_BUILDKIT", "0")  # the classic builder and its stream
        docker_on(store, a, "import - busybox", stdin=busybox_rootfs())
        context = tmp_path / "context"
        context.mkdir()
        (context / "Dockerfile").write_text(DOCKERFILE)
        (context / "message.txt").write_text(MESSAGE)
        app_id = built_id(docker_on(store, a, f"build -t chain-app {context}"))
        assert docker_on(store, a, "run --rm chain-app") == MESSAGE.upper()

        docker_on(store, a, f"tag chain-app {image}")
        pushed = docker_on(store, a, f"push {image}")
        assert re.search(r"^1: digest: sha256:[0-9a-f]{64} size: \d+$", pushed, re.M), pushed
        docker_on(store, a, f"rmi {image}")
        assert image not in docker_on(store, a, "images --format '{{.Repository}}:{{.Tag}}'")

        # An unchanged context rebuilds from the cache: every step but a FROM says so, and gives the same image.
        again = docker_on(store, a, f"build -t chain-app {context}")
        steps = re.split(r"^Step \d+/\d+ : ", again, flags=re.M)[1:]
        assert len(steps) == DOCKERFILE.count("\n"), again
        assert all(step.startswith("FROM ") or "\n ---> Using cache\n" in step for step in steps), again
        assert built_id(again) == app_id

        for key in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests would let them override DOCKER_CERT_PATH's CA
            monkeypatch.delenv(key, raising=False)
        client = docker.from_env(environment=env_of(store, b))
        try:
            pulled = client.images.pull(f"127.0.0.1:{port}/chain/app", tag="1")
            assert pulled.id.startswith(f"sha256:{app_id}") and image in pulled.tags  # the very image built on A
            assert client.containers.run(image, remove=True).decode() == MESSAGE.upper()
        finally:
            client.close()
    finally:
        for machine in hosts:
            machine.close()
