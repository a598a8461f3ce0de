"""docker-py 7 against our daemon: negotiation via /version, run, exec_run (no lost output), errors it maps."""

from __future__ import annotations

import io
import tarfile

import docker
import pytest

from tests.support.daemon import Daemon


@pytest.fixture
def client(daemon: Daemon) -> docker.DockerClient:
    client = docker.DockerClient(base_url=daemon.host, version="auto", timeout=60)
    yield client
    client.close()


def test_version_ping_and_lists(client: docker.DockerClient, image: str) -> None:
    assert client.ping() is True
    assert client.version()["ApiVersion"] == "1.47"
    assert client.api.api_version == "1.47"
    assert any(image in item.tags for item in client.images.list())
    assert client.info()["Swarm"]["LocalNodeState"] == "inactive"


def test_run_exec_and_errors(client: docker.DockerClient, image: str, name: str) -> None:
    assert client.containers.run(image, "echo hi", remove=True) == b"hi\n"
    with pytest.raises(docker.errors.ContainerError) as failed:
        client.containers.run(image, ["sh", "-c", "echo bad >&2; exit 3"], remove=True)
    assert failed.value.exit_status == 3 and b"bad" in failed.value.stderr
    with pytest.raises(docker.errors.ImageNotFound):
        client.containers.create("apitest/nothing:here")
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("no-such-container")
    container = client.containers.run(image, "sleep 300", detach=True, name=name, labels={"suite": "api"})
    try:
        assert [item.name for item in client.containers.list(filters={"label": "suite=api", "name": name})] == [name]
        for attempt in range(20):  # the output of a fast exec must never be lost after the 101
            result = container.exec_run(["echo", f"n{attempt}"])
            assert (result.exit_code, result.output) == (0, b"n%d\n" % attempt)
        code, output = container.exec_run(["sh", "-c", "echo o; echo e >&2; exit 7"], demux=True)
        assert code == 7 and output == (b"o\n", b"e\n")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            data = b"put by docker-py\n"
            member = tarfile.TarInfo("note.txt")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
        assert container.put_archive("/tmp", buffer.getvalue())
        chunks, stat = container.get_archive("/tmp/note.txt")
        assert stat["name"] == "note.txt" and stat["size"] == len(data)
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
            assert archive.extractfile("note.txt").read() == data
        stats = container.stats(stream=False)
        assert stats["pids_stats"]["current"] >= 1
        container.stop(timeout=1)
        assert container.wait()["StatusCode"] in (137, 143)
    finally:
        container.remove(force=True)
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(name)


def test_attach_socket_with_stdin(client: docker.DockerClient, image: str, name: str) -> None:
    container = client.containers.create(image, "cat", stdin_open=True, name=name)
    try:
        sock = client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stream": 1})
        container.start()
        raw = sock._sock
        raw.sendall(b"echoed back\n")
        raw.shutdown(1)  # half-close: cat sees EOF and exits; we must still get its output
        received = b""
        while True:
            chunk = raw.recv(4096)
            if not chunk:
                break
            received += chunk
        assert received == b"\x01\x00\x00\x00\x00\x00\x00\x0cechoed back\n"
        assert container.wait(timeout=20)["StatusCode"] == 0
    finally:
        container.remove(force=True)
