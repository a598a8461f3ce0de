"""Fixtures for signing and enforcement: a loopback registry, an image pushed to it, key pairs made by the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from machines.runtime.errors import Conflict, NotFound
from machines.runtime.images.service import ImageService
from machines.runtime.images.store import ImageStore
from tests.support import busybox

PASSPHRASE = "correct horse battery staple"


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
