"""Create is a transaction: a failure or Ctrl-C half way leaves no resource and no store entry."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from machines.errors import CancelledError, DriverError, MachineTimeoutError
from machines.machine import Machines
from machines.store import STATE_CREATING

from .conftest import CliResult

pytestmark = pytest.mark.fast  # the fast tier: no root, seconds (pytest -m fast)


def test_driver_fault_rolls_back_every_resource(store_path: Path, file_driver: Path) -> None:
    machines = Machines(store_path)
    with pytest.raises(DriverError, match="injected fault"):
        machines.create("m1", "files", {"world": str(file_driver), "fail_at": "create"})
    assert list(file_driver.iterdir()) == []
    assert machines.store.names() == [] and not machines.store.machine_dir("m1").exists()


def test_ctrl_c_rolls_back_and_says_so(store_path: Path, file_driver: Path) -> None:
    machines = Machines(store_path)
    with pytest.raises(CancelledError, match="cancelled; everything it made was removed"):
        machines.create("m1", "files", {"world": str(file_driver), "fail_at": "interrupt"})
    assert list(file_driver.iterdir()) == []
    assert machines.store.names() == []


def test_ssh_timeout_names_what_it_waited_for_and_rolls_back(store_path: Path, file_driver: Path) -> None:
    machines = Machines(store_path)
    with pytest.raises(MachineTimeoutError) as caught:
        machines.create("m1", "files", {"world": str(file_driver), "ssh_port": 1}, ssh_timeout=0.5)
    message = str(caught.value)
    assert "127.0.0.1 port 1 as user root" in message and "Connection refused" in message
    assert list(file_driver.iterdir()) == [] and machines.store.names() == []


def test_keep_on_error_keeps_resources_and_rm_removes_them(
    store_path: Path, file_driver: Path, cli: Callable[..., CliResult]
) -> None:
    result = cli("create", "-d", "files", "--files-world", str(file_driver), "--files-fail-at", "create",
                 "--keep-on-error", "m1")
    assert result.exit_status == 1
    assert sorted(path.name for path in file_driver.iterdir()) == ["m1-0", "m1-1"]
    record = json.loads((store_path / "machines" / "m1" / "config.json").read_text())
    assert record["state"] == STATE_CREATING and record["ledger"] == ["file m1-0", "file m1-1"]

    listing = cli("ls")
    assert "m1" in listing.stdout and "create creating" in listing.stdout

    assert cli("rm", "-y", "m1").exit_status == 0
    assert list(file_driver.iterdir()) == [] and not (store_path / "machines" / "m1").exists()


def test_parallel_creates_fail_independently(store_path: Path, file_driver: Path, cli: Callable[..., CliResult]) -> None:
    result = cli("create", "-d", "files", "--files-world", str(file_driver), "--files-fail-at", "create",
                 "--timeout-ssh", "0.5", "a", "b", "c")
    assert result.exit_status == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [
        f"Error: {name}: injected fault after two resources" for name in ("a", "b", "c")
    ]
    assert list(file_driver.iterdir()) == [] and not any((store_path / "machines").iterdir())


@pytest.mark.parametrize("names", [["solo"], ["a", "b", "c"]])
def test_ctrl_c_in_the_cli_removes_everything(store_path: Path, file_driver: Path, names: list[str]) -> None:
    """A real SIGINT to a running ``machines create`` (one machine, or several created at once)."""
    program = (
        "import sys\n"
        "from machines.drivers import registry\n"
        "from tests.foundation.fakes import FileDriver\n"
        "from machines.cli import main\n"
        "registry.register('files', FileDriver)\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", program, "-s", str(store_path), "create", "-d", "files", "--files-world",
         str(file_driver), "--files-pause", "2", "--timeout-ssh", "0.5", *names],
        cwd=Path(__file__).parents[2], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not all((file_driver / f"started-{name}").exists() for name in names):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the creates never started"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "cancelled; everything it made was removed" in stderr
    assert list(file_driver.iterdir()) == []
    assert not (store_path / "machines").exists() or not any((store_path / "machines").iterdir())
