"""Fixtures for signing and enforcement: a loopback registry, an image pushed to it, key pairs made by the CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from machines.runtime.errors import Conflict, NotFound
from machines.runtime.images.service import ImageService
from machines.runtime.images.store import ImageStore
from tests.support import busybox
from tests.support.daemon import Daemon, free_subnet, link_exists, start_daemon, stop_daemon, wait_for_listen
from tests.support.registry import Registry
from tests.support.sigext import SignatureFront

PASSPHRASE = "correct horse battery staple"
UNSIGNED = "A signature was required, but no signature exists"


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_machines(*args: str, env: dict | None = None, stdin: str | None = None) -> Result:
    """The real CLI in a subprocess, with our tree first on the path."""
    full_env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), **(env or {}))
    full_env.pop("COSIGN_PASSWORD", None)
    proc = subprocess.run([sys.executable, "-m", "machines", *args], capture_output=True, text=True, env=full_env,
                          input=stdin, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore(str(tmp_path / "data" / "image"))


@pytest.fixture
def service(store) -> ImageService:
    return ImageService(store)


@pytest.fixture(scope="session")
def rootfs_tar() -> bytes:
    return busybox.rootfs()


def push_image(service: ImageService, tag: str, rootfs_tar: bytes, marker: str = "") -> str:
    """Import busybox (plus a file making it distinct), push it to ``tag``; returns the manifest digest."""
    store = service.store
    image = store.resolve(store.import_tar(io.BytesIO(rootfs_tar)))
    if marker:
        upper = Path(store.root).parent / ("upper-" + marker)
        upper.mkdir(parents=True, exist_ok=True)
        (upper / "marker").write_text(marker)
        image = store.commit(str(upper), image, None, tag)
    else:
        store.tag(image.id, tag)
    messages = list(service.push(tag))  # the whole stream: a signing policy signs after the aux message
    return next(m["aux"]["Digest"] for m in messages if "aux" in m)


def drop_all_images(store: ImageStore) -> None:
    """``docker rmi -f`` of everything (a child may take its parent along)."""
    while store.list(all=True):
        for summary in store.list(all=True):
            try:
                store.remove(summary["Id"], force=True)
            except (Conflict, NotFound):
                continue


@pytest.fixture
def keypair(tmp_path):
    """(private key path, public key path, passphrase file) made by ``machines trust keygen``."""
    secret = tmp_path / "pass.txt"
    secret.write_text(PASSPHRASE + "\n")
    result = run_machines("trust", "keygen", str(tmp_path / "cosign"), "--passphrase-file", str(secret))
    assert result.code == 0, result.err
    return tmp_path / "cosign.key", tmp_path / "cosign.pub", secret


def write_policy(service: ImageService, doc: dict) -> None:
    with open(service.trust.path, "w") as f:
        json.dump(doc, f)


@pytest.fixture
def daemon(tmp_path) -> Iterator[Daemon]:
    """A runtime daemon of this test's own on a unix socket (its data root: ``.root / "data"``)."""
    root = tmp_path / "daemon"
    root.mkdir()
    socket_path = root / "docker.sock"
    bridge = f"trst{os.getpid() % 100000}"
    process = start_daemon(root, ["--host", f"unix://{socket_path}", "--bridge-subnet", free_subnet(197),
                                  "--bridge-name", bridge])
    try:
        wait_for_listen(root / "daemon.log", process, time.monotonic() + 30)
    except Exception:
        stop_daemon(process)
        raise
    instance = Daemon(root, process, socket_path, "", {}, bridge, root / "daemon.log")
    yield instance
    try:
        ids = instance.docker("ps", "-aq").stdout.split()
        if ids:
            instance.docker("rm", "-f", *[item.decode() for item in ids], timeout=120)
    finally:
        stop_daemon(process)
        if link_exists(bridge):
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)


@pytest.fixture
def interop_tools() -> None:
    """Interoperability is the point: without the tools the tests fail (never skip) and say what is missing."""
    if shutil.which("skopeo") is None or shutil.which("gpg") is None:
        pytest.fail("skopeo and gpg are needed: run scripts/setup.sh (it installs skopeo and gnupg)", pytrace=False)


@pytest.fixture
def front(registry: Registry) -> Iterator[SignatureFront]:
    """The loopback registry behind a front that serves the registry signature extension (OpenShift's API)."""
    server = SignatureFront(registry.host)
    yield server
    server.close()


def registries_d(folder, host: str, lookaside) -> str:
    """A registries.d folder whose one file names ``lookaside`` (read and staging) for ``host``."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "local.yaml"), "w") as f:
        f.write(f"# written by the test\ndocker:\n  {host}:\n    lookaside: file://{lookaside}\n"
                f"    lookaside-staging: file://{lookaside}\n")
    return str(folder)


def skopeo(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Debian's skopeo 1.9 (scripts/setup.sh installs it)."""
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, env=env, timeout=300)


class GPGHome:
    """A key in a fresh GNUPGHOME (short path: gpg-agent's socket name has a length limit)."""

    def __init__(self, name: str) -> None:
        self.home = tempfile.mkdtemp(prefix="/tmp/mgpg")
        self.env = dict(os.environ, GNUPGHOME=self.home)
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", name, "ed25519", "sign", "never"],
                       env=self.env, check=True, capture_output=True)
        listed = subprocess.run(["gpg", "--batch", "--with-colons", "--list-keys"], env=self.env, check=True,
                                capture_output=True, text=True).stdout
        self.fingerprint = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:"))
        self.public = subprocess.run(["gpg", "--batch", "--armor", "--export", self.fingerprint], env=self.env,
                                     check=True, capture_output=True).stdout

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "all"], env=self.env, capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def signer():
    home = GPGHome("Release Signer <release@example.com>")
    yield home
    home.close()


@pytest.fixture
def stranger():
    home = GPGHome("Someone Else <else@example.com>")
    yield home
    home.close()
