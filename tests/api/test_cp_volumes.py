"""Issue 10 items 2 and 7: named volumes seeded from the image as Docker does, and ``docker cp`` /
``HEAD/GET/PUT /archive`` seeing a container's named, anonymous and bind mounts, running or stopped."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon

SERVICE_IMAGE = """FROM {image}
RUN echo 'postgres:x:999:999::/var/lib/postgresql:/bin/sh' >> /etc/passwd && echo 'postgres:x:999:' >> /etc/group \\
 && mkdir -p /var/lib/postgresql/sub && echo seeded > /var/lib/postgresql/sub/file \\
 && ln -s sub/file /var/lib/postgresql/link && chown -R 999:999 /var/lib/postgresql \\
 && chmod 0750 /var/lib/postgresql && chmod 0640 /var/lib/postgresql/sub/file \\
 && touch -d '2020-01-02 03:04:05' /var/lib/postgresql/sub/file
"""


@pytest.fixture(scope="module")
def service_image(daemon: Daemon, image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A busybox image whose data folder belongs to a service user (the PostgreSQL pattern)."""
    context = tmp_path_factory.mktemp("service-image")
    (context / "Dockerfile").write_text(SERVICE_IMAGE.format(image=image))
    tag = f"apitest/service-{uuid.uuid4().hex[:8]}:1"
    daemon.out("build", "-q", "-t", tag, str(context), timeout=180)
    yield tag
    daemon.docker("rmi", "-f", tag)


def _volume(daemon: Daemon) -> Iterator[str]:
    name = f"vol-{uuid.uuid4().hex[:10]}"
    yield name
    daemon.docker("volume", "rm", "-f", name)


volume = pytest.fixture(_volume)
other_volume = pytest.fixture(_volume)

SHOW = ("stat -c '%u %g %a' /var/lib/postgresql; cat /var/lib/postgresql/sub/file; readlink /var/lib/postgresql/link;"
        " stat -c '%u %a %Y' /var/lib/postgresql/sub/file; echo written > /var/lib/postgresql/mine && echo ok")


def test_empty_named_volume_is_seeded_with_owners_modes_times_and_links(daemon: Daemon, service_image: str,
                                                                        volume: str) -> None:
    daemon.out("volume", "create", volume)  # created beforehand and empty: still seeded on first use
    shown = daemon.out("run", "--rm", "-u", "postgres", "-v", f"{volume}:/var/lib/postgresql", service_image,
                       "sh", "-c", SHOW)
    assert shown.splitlines() == ["999 999 750", "seeded", "sub/file", "999 640 1577934245", "ok"]
    again = daemon.out("run", "--rm", "-v", f"{volume}:/var/lib/postgresql", service_image,
                       "sh", "-c", "rm /var/lib/postgresql/sub/file; ls /var/lib/postgresql")
    assert again.split() == ["link", "mine", "sub"]  # not empty any more: never seeded again
    third = daemon.out("run", "--rm", "-v", f"{volume}:/var/lib/postgresql", service_image,
                       "ls", "/var/lib/postgresql/sub")
    assert third == ""


def test_anonymous_volumes_are_seeded_and_nocopy_is_not(daemon: Daemon, service_image: str,
                                                        volume: str) -> None:
    shown = daemon.out("run", "--rm", "-u", "postgres", "-v", "/var/lib/postgresql", service_image, "sh", "-c", SHOW)
    assert shown.splitlines()[0] == "999 999 750" and shown.splitlines()[-1] == "ok"
    empty = daemon.out("run", "--rm", "--mount", f"type=volume,src={volume},dst=/var/lib/postgresql,volume-nocopy",
                       service_image, "ls", "-A", "/var/lib/postgresql")
    assert empty == ""


def test_cp_sees_named_anonymous_and_bind_mounts_stopped_and_running(daemon: Daemon, image: str, name: str,
                                                                     volume: str, tmp_path: Path) -> None:
    bind = tmp_path / "bind"
    bind.mkdir()
    daemon.out("create", "--name", name, "-v", f"{volume}:/named", "-v", "/anon", "-v", f"{bind}:/bind",
               image, "sleep", "300")
    mounts = {m["Destination"]: m["Source"] for m in json.loads(daemon.out("inspect", name))[0]["Mounts"]}
    try:
        for state in ("stopped", "running"):
            if state == "running":
                daemon.out("start", name)
            source = tmp_path / ("in-" + state)
            source.write_text(f"copied while {state}\n")
            for dest in ("/named", "/anon", "/bind"):
                daemon.out("cp", str(source), f"{name}:{dest}/")
                assert (Path(mounts[dest]) / source.name).read_text() == f"copied while {state}\n"
                (Path(mounts[dest]) / ("host-" + state)).write_text("from the host side\n")
                out = tmp_path / (f"out-{state}{dest.replace('/', '-')}")
                daemon.out("cp", f"{name}:{dest}/host-{state}", str(out))
                assert out.read_text() == "from the host side\n"
            if state == "running":
                assert daemon.out("exec", name, "cat", "/named/in-running") == "copied while running\n"
        daemon.out("stop", "-t", "0", name)
        listing = daemon.docker("cp", name + ":/named/.", str(tmp_path / "named-copy"))
        assert listing.returncode == 0
        assert sorted(os.listdir(tmp_path / "named-copy")) == ["host-running", "host-stopped", "in-running",
                                                               "in-stopped"]
    finally:
        daemon.docker("rm", "-f", name)


def test_cp_into_a_read_only_mount_is_refused_as_docker(daemon: Daemon, image: str, name: str,
                                                        tmp_path: Path) -> None:
    bind = tmp_path / "ro"
    bind.mkdir()
    payload = tmp_path / "payload"
    payload.write_text("x")
    daemon.out("run", "-d", "--name", name, "-v", f"{bind}:/ro:ro", image, "sleep", "300")
    try:
        refused = daemon.docker("cp", str(payload), name + ":/ro/")
        assert refused.returncode != 0 and b"mounted volume is marked read-only" in refused.stderr
        assert os.listdir(bind) == []
    finally:
        daemon.docker("rm", "-f", name)

