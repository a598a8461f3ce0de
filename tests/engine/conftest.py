"""Fixtures for the engine tests: a busybox image built from the host's busybox-static, and an Engine per module
with private data and exec roots that leaves no container, mount, cgroup or process behind."""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from machines.runtime.engine import Engine, Session
from machines.runtime.errors import EngineError
from machines.runtime.linux import cgroups
from tests.support import busybox

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n" \
         "app:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app\n"


@pytest.fixture(scope="session")
def busybox_tar() -> bytes:
    """The busybox rootfs with a few users (``app`` with a home, ``nobody``), as a tar for ImageStore.import_tar."""
    return busybox.rootfs(PASSWD, GROUP, ("app",))


def _wait_discards() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("discard-"):
            thread.join(10)


def cleanup_engine(engine: Engine) -> None:
    """Force-removes every container (killing its processes and shim), then checks nothing stayed behind."""
    ids = [summary["Id"] for summary in engine.list_containers(all=True)]
    for cid in ids:
        try:
            engine.remove(cid, force=True, volumes=True)
        except EngineError:
            pass
    _wait_discards()
    engine.close()
    left = [cid for cid in ids if cgroups.open_cgroup("machines/" + cid).exists()]
    assert not left, f"cgroups left behind: {left}"


def make_roots() -> tuple:
    base = tempfile.mkdtemp(prefix=f"me-{os.getpid()}-", dir="/tmp")
    return base, os.path.join(base, "data"), os.path.join(base, "run")


@pytest.fixture(scope="module")
def engine(busybox_tar: bytes) -> Iterator[Engine]:
    base, data, run = make_roots()
    pid = os.getpid()
    eng = Engine(data, run, bridge_name=f"meng{pid % 100000}",
                 bridge_subnet=f"10.199.{pid % 250}.0/24")
    eng.images.import_tar(io.BytesIO(busybox_tar), repo_tag="busybox:latest")
    try:
        yield eng
    finally:
        cleanup_engine(eng)
        shutil.rmtree(base, ignore_errors=True)


Runner = Callable[..., str]


@pytest.fixture
def run(engine: Engine) -> Iterator[Runner]:
    """``run(cmd, **config)`` creates and starts a busybox container (network none unless told) and returns its
    id; every container made through it is removed after the test."""
    made: list[str] = []

    def start(cmd: list[str], host: dict | None = None, start: bool = True, **config: object) -> str:
        host_config = {"NetworkMode": "none"}
        host_config.update(host or {})
        body = {"Image": "busybox", "Cmd": cmd, "HostConfig": host_config}
        body.update(config)
        cid = engine.create_container(body)["Id"]
        made.append(cid)
        if start:
            engine.start(cid)
        return cid

    yield start
    for cid in made:
        try:
            engine.remove(cid, force=True, volumes=True)
        except EngineError:
            pass
    _wait_discards()
    for cid in made:
        assert not cgroups.open_cgroup("machines/" + cid).exists(), "cgroup left behind"


def output(engine: Engine, cid: str, stdout: bool = True, stderr: bool = False) -> str:
    return b"".join(d for _, d in engine.logs(cid, follow=False, stdout=stdout, stderr=stderr)).decode()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def read_session(session: Session) -> bytes:
    out = b""
    while True:
        chunk = session.read()
        if chunk is None:
            return out
        out += chunk[1]


def proc_stat(pid: int) -> tuple[str, int, str]:
    """(comm, parent pid, state) of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()
    return text[text.index("(") + 1:text.rindex(")")], int(fields[1]), fields[0]


def launchers_of(parent: int) -> list[int]:
    """The live launchers (``machines-launcher``, which forks monitors and exec helpers) whose parent is ``parent``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm, ppid, state = proc_stat(int(entry))
            except OSError:
                continue
            if comm == "machines-launch" and ppid == parent and state != "Z":
                found.append(int(entry))
    return found

