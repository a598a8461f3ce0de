"""Small tar archives made in memory for tests that upload them (``docker load``, ``/archive``, build contexts)."""

from __future__ import annotations

import io
import tarfile


def files_tar(files: dict[str, bytes]) -> bytes:
    """A tar holding each ``name: content`` as a regular file, in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()
