"""Fixtures of the chain tests: a store whose machines are removed afterwards, and Debian's docker-registry on
loopback. Both go even when a test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images.registry_fixture import Registry, start_registry
from tests.support.cli import machines


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    """A store of this test; every machine in it is removed afterwards, pass or fail."""
    root = tmp_path / "store"
    yield root
    folder = root / "machines"
    names = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
    if names:
        machines(root, "rm", "-f", "-y", *names)
    assert not folder.is_dir() or not any(folder.iterdir()), f"machines left in {root}"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1 (anonymous, plain HTTP), stopped afterwards."""
    server = start_registry(str(tmp_path / "registry"))
    yield server
    server.stop()
