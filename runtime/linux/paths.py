"""Sizes of directory trees (SizeRw, prune's SpaceReclaimed). Resolving paths inside a tree: ``safepath``."""
from __future__ import annotations

import os


def tree_size(path: str) -> int:
    """Bytes of the regular files below ``path`` (for SizeRw and prune's SpaceReclaimed)."""
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total
