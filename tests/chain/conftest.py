"""Fixtures of the chain tests: a store whose machines are removed afterwards, even when a test fails (Debian's
docker-registry on loopback, ``registry``, comes from ``tests/support/registry.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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

