"""Fixtures of the chain tests: ``store`` is the shared ``machines_store`` (``tests/support/fixtures.py``); Debian's
docker-registry on loopback, ``registry``, comes from ``tests/support/registry.py``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def store(machines_store: Path) -> Path:
    """The chain tests' name for the shared ``machines_store``."""
    return machines_store
