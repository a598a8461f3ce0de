"""Build, push and pull through the API with the real clients: the classic builder (DOCKER_BUILDKIT=0) and a local
docker-registry on loopback."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import docker
import pytest

from tests.support.daemon import TAG, Daemon
from tests.support.registry import Registry, start_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    instance = start_registry(str(tmp_path_factory.mktemp("api-registry")))
    yield instance
    instance.stop()


def test_build_push_pull_with_the_cli(daemon: Daemon, image: str, registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        f"FROM {image} AS base\nRUN echo built > /f\nFROM {image}\nCOPY --from=base /f /g\nCMD [\"cat\", \"/g\"]\n")
    target = f"{registry.host}/api/built:{TAG}"
    built = daemon.docker("build", "-t", target, str(tmp_path), timeout=120)
    assert built.returncode == 0, built.stderr
    assert b"Step 5/5 : CMD" in built.stdout and b"Successfully tagged %s\n" % target.encode() in built.stdout
    assert daemon.out("run", "--rm", target) == "built\n"
    pushed = daemon.out("push", target)
    assert pushed.startswith(f"The push refers to repository [{registry.host}/api/built]")
    assert f"{TAG}: digest: sha256:" in pushed
    daemon.out("rmi", target)
    pulled = daemon.out("pull", target)
    assert pulled.endswith(f"\n{target}\n") and "Digest: sha256:" in pulled
    assert daemon.out("run", "--rm", target) == "built\n"
    missing = daemon.docker("pull", f"{registry.host}/api/missing:1")
    assert missing.returncode == 1
    assert missing.stderr.startswith(b"Error response from daemon: manifest for %s/api/missing:1 not found"
                                     % registry.host.encode())
    (tmp_path / "Dockerfile").write_text(f"FROM {image}\nRUN exit 3\n")
    failed = daemon.docker("build", str(tmp_path), timeout=120)
    assert failed.returncode == 3  # the CLI exits with errorDetail.code, the RUN status, as with Docker
    assert b"The command '/bin/sh -c exit 3' returned a non-zero code: 3" in failed.stderr
    daemon.out("rmi", target)


def test_build_with_docker_py(daemon: Daemon, image: str) -> None:
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        data = (f"FROM {image}\nENV GREETING=hello\nCMD [\"sh\", \"-c\", \"echo $GREETING\"]\n").encode()
        member = tarfile.TarInfo("Dockerfile")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    client = docker.DockerClient(base_url=daemon.host, version="auto", timeout=60)
    try:
        built, logs = client.images.build(fileobj=io.BytesIO(context.getvalue()), custom_context=True,
                                          tag=f"apitest/pybuilt:{TAG}")
        assert any("Successfully built" in entry.get("stream", "") for entry in logs)
        assert client.containers.run(built.id, remove=True) == b"hello\n"
        client.images.remove(f"apitest/pybuilt:{TAG}")
    finally:
        client.close()
