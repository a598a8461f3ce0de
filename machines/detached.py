"""Detached helper processes of machines (a port forward, a reverse sshfs server): started in their own session so
they outlive the command, considered started once they write their state file, and failing with the last line they
logged when they exit before that."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from machines.errors import MachinesError, StateError

START_TIMEOUT = 20.0


def start(module: str, arguments: list[str], state: Path, *, failure: str) -> int:
    """Run ``python -m MODULE ARGUMENTS`` detached (log next to ``state``); its pid once ``state`` exists.
    ``failure`` starts the error message when it exits first or takes longer than ``START_TIMEOUT``."""
    state.parent.mkdir(mode=0o700, exist_ok=True)
    state.unlink(missing_ok=True)
    log_path = state.with_suffix(".log")
    with open(log_path, "wb") as output, open(os.devnull, "rb") as devnull:
        process = subprocess.Popen([sys.executable, "-m", module, *arguments], stdin=devnull, stdout=output,
                                   stderr=output, start_new_session=True, close_fds=True, cwd="/")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise StateError(f"{failure}: {tail[0].removeprefix('error: ')}")
        if state.is_file():
            return process.pid
        time.sleep(0.05)
    process.terminate()
    raise StateError(f"{failure}: it did not start within {START_TIMEOUT:g}s")


def main(serve: Callable[[], None]) -> int:
    """A helper process's exit status: 0, or 1 with ``error: MESSAGE`` logged for ``start`` to report."""
    try:
        serve()
    except MachinesError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0
