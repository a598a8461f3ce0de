"""The runtime's data root is not readable by other users (dockerd's modes), also when an older daemon left it
world-readable: image configs, the build cache, container configs and network state stay root's."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.daemon import Daemon, free_subnet, start_daemon, stop_daemon, wait_for_listen

NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _readable_by_nobody(paths: list) -> list:
    """Which of ``paths`` an unprivileged user can open, tried in a child that dropped to nobody."""
    script = ("import os, sys\nfor p in sys.argv[1:]:\n    try:\n        open(p, 'rb').close() if os.path.isfile(p) "
              "else os.listdir(p)\n        print(p)\n    except OSError:\n        pass\n")

    def drop() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    result = subprocess.run(["python3", "-c", script, *map(str, paths)], capture_output=True, text=True,
                            preexec_fn=drop, timeout=60)
    return result.stdout.split()


def test_data_root_modes_are_dockerds(daemon: Daemon) -> None:
    data = daemon.root / "data"
    assert _mode(data) == 0o710
    assert _mode(data / "containers") == 0o710
    assert _mode(data / "image") == 0o700
    assert _mode(data / "network") == 0o700
    assert _mode(data / "volumes") == 0o701
    assert _mode(daemon.root / "exec") == 0o710


def test_a_loose_data_root_is_tightened_at_start() -> None:
    """An older daemon's 0755 tree, with an image config and a build cache inside: the daemon closes it at start,
    and a user who can reach the folder reads none of it."""
    base = Path(tempfile.mkdtemp(prefix="machines-loose-root-"))  # under /tmp: reachable by the unprivileged user
    try:
        _tighten_a_loose_root(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _tighten_a_loose_root(base: Path) -> None:
    os.chmod(base, 0o755)
    data = base / "data"
    secrets = [data / "image" / "blobs" / "sha256" / ("0" * 64), data / "image" / "build-cache.json",
               data / "network" / "state.json"]
    for path in secrets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        path.chmod(0o644)
    for folder in [data, *{p.parent for p in secrets}, data / "image"]:
        folder.chmod(0o755)
    assert set(_readable_by_nobody(secrets)) == set(map(str, secrets))  # the attack works on the loose tree
    bridge = f"apil{os.getpid() % 100000}"
    process = start_daemon(base, ["--host", "unix://%s" % (base / "d.sock"), "--bridge-name", bridge,
                                  "--bridge-subnet", free_subnet(199)])
    try:
        wait_for_listen(base / "daemon.log", process, time.monotonic() + 30)
        assert _mode(data) == 0o710 and _mode(data / "image") == 0o700 and _mode(data / "network") == 0o700
        assert _readable_by_nobody([data, data / "image", *secrets]) == []
    finally:
        stop_daemon(process)
