"""Bad input gets one line on stderr, a distinct exit status and an unchanged store; never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from machines.drivers import registry
from machines.errors import ExitStatus

from .conftest import CliResult
from .fakes import FileDriver

pytestmark = pytest.mark.fast  # the fast tier: no root, seconds (pytest -m fast)


def _snapshot(store_path: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(store_path)), p.read_bytes()) for p in store_path.rglob("*") if p.is_file()
                  and p.name != ".lock")


def _one_error_line(result: CliResult) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def existing(cli: Callable[..., CliResult], file_driver: Path, store_path: Path) -> list[tuple[str, bytes]]:
    """A store holding one finished machine ``taken`` (its create stops after the record, SSH never answers)."""
    result = cli("create", "-d", "files", "--files-world", str(file_driver), "--files-fail-at", "create",
                 "--keep-on-error", "taken")
    assert result.exit_status == 1
    return _snapshot(store_path)


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["create", "-d", "files", "bad_name"], ExitStatus.USAGE, "invalid machine name 'bad_name'"),
        (["create", "-d", "nosuchdriver", "ok"], ExitStatus.USAGE, "unknown driver 'nosuchdriver'; installed drivers:"),
        (["create", "-d", "files", "taken"], ExitStatus.ERROR, "machine 'taken' already exists"),
        (["create", "-d", "files", "fresh"], ExitStatus.PRE_CREATE, "the files driver needs --files-world"),
        (["create", "-d", "generic", "fresh"], ExitStatus.PRE_CREATE, "needs --generic-ip-address"),
        (["create", "-d", "files", "--generic-ip-address", "10.0.0.1", "fresh"], ExitStatus.USAGE,
         "--generic-ip-address belongs to the generic driver, but the driver is files"),
        (["create", "--no-such-flag", "x"], ExitStatus.USAGE, "No such option: --no-such-flag"),
        (["create", "-d", "files", "--files-resources", "many", "x"], ExitStatus.USAGE, "Invalid value for '--files-resources'"),
        (["create", "-d", "files", "--runtime-data-root", "data/runtime", "x"], ExitStatus.USAGE,
         "--runtime-data-root must be an absolute path, not 'data/runtime'"),
        (["ls", "--filter", "colour=red"], ExitStatus.USAGE, "bad filter 'colour=red'"),
        (["ls", "--format", "{nope}"], ExitStatus.USAGE, "bad --format field 'nope'"),
        (["inspect", "ghost"], ExitStatus.NOT_FOUND, "machine 'ghost' does not exist"),
        (["rm", "-y", "taken", "ghost"], ExitStatus.NOT_FOUND, "machine 'ghost' does not exist"),
        (["version", "taken"], ExitStatus.ERROR, "has no runtime installed"),
        (["ssh", "taken", "true"], ExitStatus.ERROR, "has no recorded host key"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    cli: Callable[..., CliResult], existing: list[tuple[str, bytes]], store_path: Path,
    args: list[str], status: ExitStatus, message: str,
) -> None:
    result = cli(*args)
    assert result.exit_status == status
    assert message in _one_error_line(result)
    assert result.stdout == ""
    assert _snapshot(store_path) == existing


class _BuggyDriver(FileDriver):
    def pre_create_check(self) -> None:
        raise ZeroDivisionError("division by zero")


def test_a_bug_is_one_line_with_a_hint_and_debug_shows_the_traceback(
    cli: Callable[..., CliResult], store_path: Path
) -> None:
    registry.register("buggy", _BuggyDriver)
    try:
        plain = cli("create", "-d", "buggy", "x")
        debug = cli("--debug", "create", "-d", "buggy", "x")
    finally:
        registry.unregister("buggy")
    assert plain.exit_status == debug.exit_status == ExitStatus.ERROR
    assert _one_error_line(plain) == "Error: unexpected ZeroDivisionError: division by zero (run with --debug for details)"
    assert "Traceback (most recent call last)" in debug.stderr and "pre_create_check" in debug.stderr
    assert not (store_path / "machines" / "x").exists()


def test_create_help_lists_every_driver_flag_with_its_env_var(cli: Callable[..., CliResult], file_driver: Path) -> None:
    result = cli("create", "--help")
    assert result.exit_status == 0
    for text in ("--generic-ip-address", "GENERIC_IP_ADDRESS", "--generic-ssh-key", "--files-token", "FILES_TOKEN",
                 "--keep-on-error", "--no-provision", "--timeout-ssh", "MACHINES_DRIVER",
                 "--runtime-data-root", "MACHINES_RUNTIME_DATA_ROOT"):
        assert text in result.stdout


def test_inspect_masks_secrets(cli: Callable[..., CliResult], file_driver: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILES_TOKEN", "s3cr3t-value")
    cli("create", "-d", "files", "--files-world", str(file_driver), "--files-fail-at", "create", "--keep-on-error", "m")
    shown = cli("inspect", "m")
    assert shown.exit_status == 0 and '"token": "<hidden>"' in shown.stdout and "s3cr3t-value" not in shown.stdout
    assert cli("inspect", "--format", "{driver_name} {driver[resources]}", "m").stdout == "files 3\n"
