"""Issue 18 item 5: ``docker cp`` into a container is extracted from the request body as it arrives (no spool file),
as moby does. What a user sees: big and odd-sized files arrive intact whatever the body's framing (the CLI's
chunked upload, docker-py's Content-Length), a client that hangs up half-way leaves the container running and
unlocked, and an archive refused half-way keeps the members before the bad one, as dockerd does."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
from pathlib import Path

import docker
import pytest

from tests.support.daemon import Daemon

BIG = (3 << 20) + 123  # beyond the 1 MiB copy buffer, and not a multiple of the 512-byte tar block


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _files_of(stream: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]


@pytest.fixture
def running(daemon: Daemon, image: str, name: str) -> str:
    daemon.out("run", "-d", "--name", name, image, "sleep", "600")
    yield name
    daemon.docker("rm", "-f", name)


def test_big_and_odd_sized_files_arrive_intact_chunked_and_with_content_length(daemon: Daemon, running: str,
                                                                              tmp_path: Path) -> None:
    contents = {"big": os.urandom(BIG), "small": b"x" * 1000, "empty": b"", "after": os.urandom(4097)}
    folder = tmp_path / "dir"
    folder.mkdir()
    for file, data in contents.items():
        (folder / file).write_bytes(data)
    daemon.out("cp", str(folder), f"{running}:/cli")  # the CLI streams a chunked body
    api = docker.APIClient(base_url=daemon.host, version="auto", timeout=60)
    try:
        assert api.put_archive(running, "/", _tar([("py/" + file, data) for file, data in contents.items()]))
        for top in ("cli", "py"):
            stream, _ = api.get_archive(running, "/" + top)
            assert _files_of(b"".join(stream)) == {f"{top}/{file}": data for file, data in contents.items()}
    finally:
        api.close()
    digest = daemon.out("exec", running, "sha256sum", "/cli/big").split()[0]
    assert digest == hashlib.sha256(contents["big"]).hexdigest()


def test_a_client_hanging_up_mid_upload_leaves_the_container_thawed_and_unlocked(daemon: Daemon,
                                                                                 running: str) -> None:
    """The container is locked and frozen while the body streams in; a client that walks away half-way must not
    leave it so."""
    archive = _tar([("first", b"complete"), ("half", os.urandom(4 << 20))])
    head = (f"PUT /containers/{running}/archive?path=/ HTTP/1.1\r\nHost: docker\r\n"
            "Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    part = archive[:2 << 20]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(daemon.socket_path))
        client.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
    assert daemon.out("exec", running, "cat", "/first", timeout=30) == "complete"
    daemon.out("pause", running)
    daemon.out("unpause", running)
    assert daemon.out("inspect", "-f", "{{.State.Status}}", running) == "running\n"


def test_an_archive_refused_half_way_keeps_the_members_before_it_as_docker(daemon: Daemon, running: str) -> None:
    api = docker.APIClient(base_url=daemon.host, version="auto", timeout=60)
    try:
        archive = _tar([("before", b"kept"), ("../escape", b"refused"), ("after", b"never")])
        with pytest.raises(docker.errors.APIError) as refused:
            api.put_archive(running, "/tmp", archive)
        assert refused.value.status_code == 400 and "escapes the destination" in str(refused.value)
    finally:
        api.close()
    assert daemon.out("exec", running, "cat", "/tmp/before") == "kept"
    listing = daemon.out("exec", running, "ls", "/", "/tmp")
    assert "escape" not in listing and "after" not in listing
    assert daemon.out("exec", running, "echo", "alive") == "alive\n"


def test_an_archive_refused_while_its_client_stalls_lets_the_container_go(daemon: Daemon, running: str) -> None:
    """The body is read ahead of the extraction by a thread of its own; a refusal must not wait for that reader,
    stuck on a client that sends nothing more, before the container is unlocked and thawed."""
    archive = _tar([("before", b"kept"), ("../escape", b"refused"), ("after", os.urandom(4 << 20))])
    head = (f"PUT /containers/{running}/archive?path=/tmp HTTP/1.1\r\nHost: docker\r\n"
            "Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    part = archive[:(3 << 20) // 2]  # past the refused member and the first piece read ahead; then silence
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(daemon.socket_path))
        client.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
        assert daemon.out("exec", running, "cat", "/tmp/before", timeout=30) == "kept"
        daemon.out("pause", running, timeout=30)
        daemon.out("unpause", running, timeout=30)
        assert "escape" not in daemon.out("exec", running, "ls", "/", "/tmp", timeout=30)
