"""Resolving a path inside a container root the way the container would see it, never escaping that root.

Symlinks in an image (``/etc/resolv.conf -> /run/...``, ``/data -> ../../..``) are followed *inside* the root, like
runc's securejoin does, so mounts and archive copies cannot be tricked into touching host files.
"""
from __future__ import annotations

import os

MAX_SYMLINKS = 255


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


def secure_join(root: str, path: str) -> str:
    """Host path of ``path`` under ``root``, following symlinks as if ``root`` were ``/``. Missing trailing
    components are kept as they are (callers may create them)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list = []
    followed = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        current = os.path.join(root, *resolved, part)
        try:
            target = os.readlink(current)
        except OSError:  # not a link, or missing
            resolved.append(part)
            continue
        followed += 1
        if followed > MAX_SYMLINKS:
            raise OSError(40, "too many levels of symbolic links: %s" % path)
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return os.path.join(root, *resolved)


def mkdir_in_root(root: str, path: str, mode: int = 0o755) -> str:
    """Creates ``path`` (and parents) inside ``root`` without following links out of it; returns the host path."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current = "/"
    for part in parts:
        current = os.path.join(current, part)
        host = secure_join(root, current)
        if not os.path.isdir(host):
            os.mkdir(host, mode)
    return secure_join(root, path)


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
