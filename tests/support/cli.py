"""Running the ``machines`` command and the docker CLI as a user would, for end-to-end tests of any driver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import busybox

REPO = Path(__file__).resolve().parents[2]
MACHINES = str(Path(sys.executable).with_name("machines"))  # the venv's console script, not whatever is on PATH
DOCKER = "/usr/local/bin/docker" if os.path.exists("/usr/local/bin/docker") else "docker"


def machines(store: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
             timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``machines --storage-path STORE ARGS...`` (in ``env``, default this process's environment); a non-zero exit
    fails the test with its stderr unless ``check=False``."""
    result = subprocess.run(
        [MACHINES, "--storage-path", str(store), *args], capture_output=True, text=True, timeout=timeout,
        env=os.environ if env is None else env,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"machines {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def create_flags(driver: str, config: dict[str, Any]) -> list[str]:
    """Driver flag values (keys as in ``Driver.config``) as ``machines create --<driver>-<flag>`` options."""
    flags: list[str] = []
    for key, value in config.items():
        option = f"--{driver}-" + key.replace("_", "-")
        if value is True:
            flags.append(option)
        elif value is not False and value is not None:  # 0 is a value (``0 in (False, None)`` is true)
            for item in value if isinstance(value, list) else [value]:
                flags += [option, str(item)]
    return flags


def with_env(store: Path, name: str, command: str, stdin: bytes | None = None,
             timeout: float = 240) -> subprocess.CompletedProcess[bytes]:
    """``command`` in bash after ``eval "$(machines env NAME)"``, as a user would run it."""
    script = f'eval "$({MACHINES} --storage-path {store} env --shell bash {name})" && {command}'
    return subprocess.run(["bash", "-c", script], input=stdin, capture_output=True, timeout=timeout, env=os.environ)


def busybox_rootfs() -> bytes:
    """A busybox root filesystem tar for ``docker import`` (test hosts have no registry to pull from)."""
    return busybox.rootfs()
