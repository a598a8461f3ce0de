"""Issue 11 item 1 and issue 10 item 2, volume boundary: seeding a volume from a hostile image copies its links as
links (never what they point at on the host), and mount points named through image links stay in the container."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon


@pytest.fixture
def hostile_image(daemon: Daemon, image: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``/seed`` holds links to ``/`` and ``/etc/shadow`` (layers refuse relative links that climb out), and ``/mnt`` is a link to a folder that exists on the host."""
    host = tmp_path / "host-folder"
    host.mkdir()
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {image}\n"
        "RUN mkdir /seed && ln -s / /seed/root && ln -s /etc/shadow /seed/shadow && echo mine > /seed/file \\\n"
        f" && ln -s {host} /mnt\n")
    tag = f"sec-vol-{uuid.uuid4().hex[:8]}:1"
    daemon.out("build", "-q", "-t", tag, str(context), timeout=180)
    yield tag, host
    daemon.docker("rmi", "-f", tag)


def test_seeding_copies_links_as_links(daemon: Daemon, hostile_image: tuple[str, Path]) -> None:
    tag, _ = hostile_image
    volume = f"sec-{uuid.uuid4().hex[:10]}"
    try:
        assert daemon.out("run", "--rm", "-v", f"{volume}:/seed", tag, "cat", "/seed/file") == "mine\n"
        mountpoint = Path(json.loads(daemon.out("volume", "inspect", volume))[0]["Mountpoint"])
        assert sorted(os.listdir(mountpoint)) == ["file", "root", "shadow"]
        assert os.readlink(mountpoint / "root") == "/" and os.readlink(mountpoint / "shadow") == "/etc/shadow"
    finally:
        daemon.docker("volume", "rm", "-f", volume)


def test_mount_points_through_image_links_stay_inside(daemon: Daemon, hostile_image: tuple[str, Path],
                                                      tmp_path: Path) -> None:
    """``-v X:/mnt/x`` where the image's ``/mnt`` links to a host path: the mount point is made inside the
    container's root (where that path does not exist yet), never in the host folder."""
    tag, host = hostile_image
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "marker").write_text("bound")
    shown = daemon.out("run", "--rm", "-v", f"{bind}:/mnt/x", tag, "cat", "/mnt/x/marker")
    assert shown == "bound" and os.listdir(host) == []
