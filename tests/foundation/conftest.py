"""Fixtures of the foundation tests: a private store, an in-process CLI runner and a driver whose resources are files."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from machines.cli import main
from machines.drivers import registry

from .fakes import FileDriver


@dataclasses.dataclass
class CliResult:
    exit_status: int
    stdout: str
    stderr: str


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def cli(store_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``machines -s STORE ARGS...`` in this process (so drivers registered by the test are visible)."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        status = main(["-s", str(store_path), *args])
        captured = capsys.readouterr()
        return CliResult(status, captured.out, captured.err)

    return run


@pytest.fixture
def file_driver(tmp_path: Path) -> Iterator[Path]:
    """Register the ``files`` driver; its resources live in the returned folder (empty = nothing leaked)."""
    world = tmp_path / "world"
    world.mkdir()
    registry.register("files", FileDriver)
    yield world
    registry.unregister("files")
