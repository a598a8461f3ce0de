"""A real Debian 12 root filesystem made the documented way, for tests that need real-world images.

Docker's "create a base image" recipe: ``debootstrap`` a tree from Debian's mirror, then ``tar -C DIR -c . | docker
import -``. Building the tree takes one to two minutes, so the tar is cached under ``/var/cache/machines-test/``,
keyed by the recipe (a changed package list is a new file), and built once under a file lock: parallel pytest
workers wait for the first one instead of racing it. The tar holds ``/dev``'s device nodes as ``tar -c .`` writes
them, which is what the runtime's importer must accept.

Where the mirror cannot be reached the calling test fails with that message: a test that needs a real image must
never pass or skip silently without one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CACHE = Path("/var/cache/machines-test")
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = ("nginx-light", "postgresql-15", "python3", "curl", "procps", "redis-server")
DEBOOTSTRAP = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE]
# apt's downloaded packages and lists, emptied before the tar as Docker's mkimage/debootstrap script does (apt-get
# clean): they are most of the tree's size and no test needs them.
APT_CACHES = ("var/cache/apt/archives", "var/lib/apt/lists")


def recipe_key() -> str:
    """Names the cached tar after everything that decides its content."""
    recipe = json.dumps({"command": DEBOOTSTRAP, "mirror": MIRROR, "cleaned": APT_CACHES, "archive": "tar -c ."},
                        sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def cached_tar_path() -> Path:
    return CACHE / f"debian-{SUITE}-{recipe_key()}.tar"


def _check_mirror() -> None:
    """Fails the test with a clear message when Debian's mirror cannot be reached (rather than debootstrap's)."""
    url = f"{MIRROR}/dists/{SUITE}/Release"
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            answer.read(1)
    except (urllib.error.URLError, OSError) as error:
        pytest.fail(f"Debian's mirror cannot be reached ({url}: {error}); the Debian test image needs it",
                    pytrace=False)


def _build(target: Path) -> None:
    """debootstrap into a scratch folder next to ``target``, then ``tar -c .`` it; the tar appears atomically."""
    work = Path(tempfile.mkdtemp(prefix="debian-build-", dir=CACHE))
    try:
        root = work / "rootfs"
        built = subprocess.run([*DEBOOTSTRAP, str(root), MIRROR], capture_output=True, text=True, timeout=1800)
        if built.returncode != 0:
            log = root / "debootstrap" / "debootstrap.log"
            detail = log.read_text(errors="replace")[-3000:] if log.exists() else built.stderr[-3000:]
            pytest.fail(f"debootstrap {SUITE} from {MIRROR} failed ({built.returncode}): {built.stdout[-1000:]}"
                        f"\n{detail}", pytrace=False)
        for folder in APT_CACHES:
            for entry in (root / folder).rglob("*"):
                if entry.is_file() and entry.name != "lock":
                    entry.unlink()
        partial = work / "rootfs.tar"
        with open(partial, "wb") as out:
            subprocess.run(["tar", "-C", str(root), "-c", "."], stdout=out, check=True)
        os.replace(partial, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def debian_rootfs_tar() -> Path:
    """The cached Debian 12 root filesystem tar (with nginx-light, postgresql-15, python3, curl, procps and
    redis-server), built on first use."""
    target = cached_tar_path()
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():  # another worker may have built it while this one waited
            _check_mirror()
            _build(target)
    return target


@pytest.fixture(scope="session")
def debian_tar() -> Path:
    """Path of the Debian 12 root filesystem tar (see ``debian_rootfs_tar``)."""
    return debian_rootfs_tar()


if __name__ == "__main__":  # warm the cache: python -m tests.support.debian_image
    print(debian_rootfs_tar())
