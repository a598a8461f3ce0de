"""``machines`` with ``--driver aws`` end to end: moto keeps the books, the data plane runs a real SSH host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import NOTHING, World

MACHINES = str(Path(sys.executable).with_name("machines"))


def machines(store: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [MACHINES, "--storage-path", str(store), *args], capture_output=True, text=True, timeout=240, env=os.environ
    )
    if check and result.returncode != 0:
        raise AssertionError(f"machines {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def test_create_ssh_stop_start_rm(world: World, tmp_path: Path) -> None:
    store, name = tmp_path / "store", f"aws-{os.getpid()}"
    machines(store, "create", "--driver", "aws", "--no-provision", *world.flags(), name)
    assert machines(store, "ssh", name, "hostname").stdout.strip() == name
    assert machines(store, "ip", name).stdout.strip() == world.address(0)
    assert machines(store, "status", name).stdout.strip() == "Running"

    machines(store, "stop", name)
    assert machines(store, "status", name).stdout.strip() == "Stopped"
    machines(store, "start", name)
    assert machines(store, "ssh", name, "hostname").stdout.strip() == name  # the same pinned host key

    machines(store, "rm", "-y", name)
    assert world.cloud.leftovers() == NOTHING
    assert machines(store, "ls", "-q").stdout.strip() == ""
