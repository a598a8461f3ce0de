"""Issue 11 items 1 and 2, ``docker cp`` boundary: neither links in a container nor a process inside racing the
copy (CVE-2018-15664: swapping a folder and a symlink to ``/``) make a copy read or write outside the container."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest

from machines.runtime.linux import safepath
from tests.support.daemon import Daemon

SWAPPER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    mkdir("/w", 0755); mkdir("/w/d", 0755); mkdir("/w/d/etc", 0755); symlink("/", "/w/sym");
    for (;;) syscall(SYS_renameat2, AT_FDCWD, "/w/d", AT_FDCWD, "/w/sym", 2 /* RENAME_EXCHANGE */);
}
"""


@pytest.fixture(scope="module")
def swapper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static program that atomically exchanges ``/w/d`` (a folder) and ``/w/sym`` (a link to ``/``) as fast as
    the kernel allows, the CVE-2018-15664 proof of concept (busybox's mv would be a hundred times slower)."""
    folder = tmp_path_factory.mktemp("swapper")
    (folder / "swap.c").write_text(SWAPPER)
    built = subprocess.run(["gcc", "-static", "-O2", "-o", str(folder / "swap"), str(folder / "swap.c")],
                           capture_output=True, text=True)
    assert built.returncode == 0, "the race test needs gcc and a static libc: " + built.stderr
    return folder


def _plant(tmp_path: Path) -> tuple[Path, str, Path]:
    """A secret file and an empty folder on the host, at paths that do not exist inside the container."""
    token = uuid.uuid4().hex
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    target = tmp_path / "target"
    target.mkdir()
    return secret, token, target


def _outputs(folder: Path) -> bytes:
    found = b""
    for base, _, files in os.walk(folder):
        for name in files:
            path = Path(base) / name
            if path.is_file() and not path.is_symlink():
                found += path.read_bytes()
    return found


def test_cp_through_container_links_stays_inside(daemon: Daemon, image: str, name: str, tmp_path: Path) -> None:
    secret, token, target = _plant(tmp_path)
    daemon.out("create", "--name", name, image, "sleep", "300")
    try:
        for state in ("created", "running"):
            if state == "running":
                daemon.out("start", name)
            else:
                daemon.out("cp", "-", name + ":/", input=_tar_with_link("esc", "/"))
            out = tmp_path / ("out-" + state)
            result = daemon.docker("cp", f"{name}:/esc{secret}", str(out))
            assert result.returncode != 0 and b"Could not find the file" in result.stderr
            payload = tmp_path / "payload"
            payload.write_text("payload")
            result = daemon.docker("cp", str(payload), f"{name}:/esc{target}/")
            assert result.returncode != 0
            assert os.listdir(target) == [] and not out.exists() and token.encode() not in result.stderr
    finally:
        daemon.docker("rm", "-f", name)


def test_proc_magic_links_and_link_loops_are_refused_with_4xx(daemon: Daemon, image: str, name: str,
                                                              tmp_path: Path) -> None:
    """``/proc/self/root`` inside a running container is a magic link (the kernel would jump to the copying
    process's own root, the host's); a link loop never ends. Both are refused with a 4xx, nothing copied."""
    daemon.out("run", "-d", "--name", name, image, "sh", "-c", "ln -s loop /loop; exec sleep 300")
    api = docker.APIClient(base_url=daemon.host, version="auto", timeout=60)
    try:
        for path in ("/proc/self/root/etc/os-release", "/proc/1/root/etc/os-release", "/loop/x"):
            with pytest.raises(docker.errors.APIError) as refused:
                stream, _ = api.get_archive(name, path)
                b"".join(stream)
            assert refused.value.status_code in (400, 404), refused.value
        result = daemon.docker("cp", name + ":/proc/self/root/etc/os-release", str(tmp_path / "out"))
        assert result.returncode != 0 and not (tmp_path / "out").exists()
    finally:
        api.close()
        daemon.docker("rm", "-f", name)


def _tar_with_link(name: str, link: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    return buf.getvalue()


def test_racing_folder_and_symlink_swap_never_redirects_a_copy(daemon: Daemon, image: str, name: str,
                                                               tmp_path: Path, swapper: Path) -> None:
    """A process inside exchanges ``/w/d`` with a link to ``/`` in a loop while copies run in both directions
    for a few seconds (docker-py for many attempts, the CLI for a few): nothing of the host is read, nothing is
    written to it (copies of ``/w/d/etc`` get that folder or the container's own ``/etc``)."""
    secret, token, target = _plant(tmp_path)
    daemon.out("run", "-d", "--name", name, "-v", f"{swapper}:/swapper:ro", image, "/swapper/swap")
    payload = tmp_path / "payload"
    payload.write_text("payload")
    upload = _tar_with_file("planted", b"payload")
    outs = tmp_path / "outs"
    outs.mkdir()
    api = docker.APIClient(base_url=daemon.host, version="auto", timeout=60)
    received = b""
    attempts = 0
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            attempts += 1
            for path in (f"/w/d{secret}", "/w/d/etc"):
                try:
                    stream, _ = api.get_archive(name, path)
                    received += b"".join(stream)
                except docker.errors.APIError:
                    pass
            try:
                api.put_archive(name, f"/w/d{target}", upload)
            except docker.errors.APIError:
                pass
            if attempts % 10 == 0:  # and the real CLI, both ways
                daemon.docker("cp", f"{name}:/w/d{secret}", str(outs / str(attempts)))
                daemon.docker("cp", str(payload), f"{name}:/w/d{target}/")
        assert attempts > 10
        assert os.listdir(target) == []
        assert token.encode() not in received and token.encode() not in _outputs(outs)
        assert b"os-release" not in received  # /etc of the host (the busybox image has none)
        assert b"passwd" in received  # the container's own /etc was copied whenever /w/d was the link
        assert daemon.out("inspect", "-f", "{{.State.Status}}", name) == "running\n"  # thawed after each copy
    finally:
        api.close()
        daemon.docker("rm", "-f", name)


def _tar_with_file(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["openat2", "walk"])
def test_resolution_survives_a_concurrent_swap(tmp_path: Path, mode: str) -> None:
    """The mechanism without the freezer: lookups through a tree where a thread swaps a folder and a link to
    the host in a loop only ever reach the folder or fail."""
    safepath.use_openat2(False if mode == "walk" else None)
    secret, token, _ = _plant(tmp_path)
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "secret.txt").write_text("inside")
    (root / "sym").symlink_to(tmp_path)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(root / "d", root / "tmp")
            os.rename(root / "sym", root / "d")
            os.rename(root / "d", root / "sym")
            os.rename(root / "tmp", root / "d")

    swapper = threading.Thread(target=swap)
    swapper.start()
    seen = set()
    try:
        with safepath.Root(str(root)) as tree:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                for path in ("d/secret.txt", "d/../sym/secret.txt"):
                    try:
                        fd = tree.open(path)
                    except OSError:
                        continue
                    seen.add(os.read(fd, 100).decode())
                    os.close(fd)
    finally:
        stop.set()
        swapper.join()
        safepath.use_openat2(None)
    assert token not in seen and "inside" in seen


def test_a_client_that_walks_away_mid_copy_leaves_the_container_thawed(daemon: Daemon, image: str,
                                                                      name: str) -> None:
    """The container is frozen and locked while a copy streams: a client that reads a little and hangs up must
    not leave it so (a denial of service on the container)."""
    daemon.out("run", "-d", "--name", name, image, "sh", "-c",
               "dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null; while :; do sleep 1; done")
    api = docker.APIClient(base_url=daemon.host, version="auto", timeout=60)
    try:
        assert daemon.out("exec", name, "sh", "-c", "while [ $(stat -c %s /big) -lt 67108864 ]; do sleep 0.1; done;"
                          " echo ready") == "ready\n"
        stream, _ = api.get_archive(name, "/big", chunk_size=65536)
        next(iter(stream))
        stream.close()
        api.close()
        assert daemon.out("exec", name, "echo", "alive", timeout=30) == "alive\n"
        daemon.out("pause", name)
        daemon.out("unpause", name)
    finally:
        api.close()
        daemon.docker("rm", "-f", name)
