"""Sizes of directory trees (SizeRw, prune's SpaceReclaimed) and the daemon's private folders. Resolving paths
inside a tree: ``safepath``."""
from __future__ import annotations

import os
import stat

from machines.runtime.linux import safepath


def private_dir(path: str, mode: int) -> str:
    """Make the folder ``path`` (parents too) with exactly ``mode``, also when it already existed looser (an older
    daemon's 0755): the daemon's data holds image configs, build caches and container files of every user."""
    os.makedirs(path, mode=mode, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path


def tree_size(path: str) -> int:
    """Bytes of the regular files below ``path``, walked through fds (a running container's upper dir may swap a
    folder for a link to the host while we count)."""
    total = 0
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        for _, _, _, st in safepath.walk(top):
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    finally:
        os.close(top)
    return total
