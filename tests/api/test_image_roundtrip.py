"""Images round-trip as on Docker Engine: ``docker save`` streamed into ``docker load`` in any chunking, loads of
things that are not image archives refused in dockerd's words, RepoTags/RepoDigests after tag, untag, push, pull,
a moved tag and removal; with the docker CLI, docker-py and docker-registry on loopback."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support.daemon import DOCKER, TAG, Daemon
from tests.support.registry import Registry, start_registry
from tests.support.tarballs import files_tar


@pytest.fixture
def client(daemon: Daemon) -> Iterator[docker.DockerClient]:
    instance = docker.DockerClient(base_url=daemon.host, version="auto", timeout=120)
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    instance = start_registry(str(tmp_path_factory.mktemp("roundtrip-registry")))
    yield instance
    instance.stop()


def _built(daemon: Daemon, image: str, tmp_path: Path, tag: str, text: str) -> str:
    (tmp_path / "Dockerfile").write_text(f"FROM {image}\nRUN echo {text} > /marker\n")
    daemon.out("build", "-q", "-t", tag, str(tmp_path), timeout=120)
    return daemon.out("image", "inspect", "-f", "{{.Id}}", tag).strip()


def _chunks(data: bytes, sizes: list) -> Iterator[bytes]:
    offset = 0
    for size in itertools.cycle(sizes):
        if offset >= len(data):
            return
        yield data[offset:offset + size]
        offset += size


def test_save_streamed_into_load_in_any_chunking(daemon: Daemon, client: docker.DockerClient, image: str,
                                                 tmp_path: Path) -> None:
    tag = "roundtrip/app:" + TAG
    image_id = _built(daemon, image, tmp_path, tag, "saved")
    piped = subprocess.run(["bash", "-c", f"{DOCKER} save {tag} | {DOCKER} load"], capture_output=True,
                           env=daemon.env(), timeout=120)
    assert piped.returncode == 0 and piped.stdout.decode() == f"Loaded image: {tag}\n", piped.stderr
    data = b"".join(client.images.get(tag).save(chunk_size=4093, named=True))
    for sizes in ([1] * 3000 + [len(data)], [1, 3, 511, 513, 1023, 65537], [7, 1 << 20]):
        daemon.out("rmi", tag)
        (loaded,) = client.images.load(_chunks(data, sizes))
        assert loaded.id == image_id and loaded.tags == [tag]
        assert daemon.out("run", "--rm", tag, "cat", "/marker") == "saved\n"
    # by ID: the image comes back untagged, and the load says so with its ID
    untagged = b"".join(client.api.get_image(image_id))
    daemon.out("rmi", tag)
    loaded = client.api.load_image(untagged)
    assert [m.get("stream") for m in loaded] == [f"Loaded image ID: {image_id}\n"]
    assert client.images.get(image_id).attrs["RepoTags"] == []
    daemon.out("rmi", image_id)


@pytest.mark.parametrize("body, message", [
    (b"hello, not an image\n", "^unexpected EOF$"),
    (os.urandom(4000), "^archive/tar: invalid tar header$"),
    (b"", "^open .*/manifest.json: no such file or directory$"),
    (files_tar({"notes.txt": b"just a file"}), "^open .*/manifest.json: no such file or directory$"),
    (files_tar({"manifest.json": b"{}"}), "^json: cannot unmarshal object into Go value of type "
                                     r"\[\]tarexport.manifestItem$"),
    (files_tar({"manifest.json": b"null"}), r"^invalid manifest, manifest cannot be null \(but can be \[\]\)$"),
    (files_tar({"manifest.json": json.dumps([{"Config": "c.json", "Layers": []}]).encode()}),
     "^open .*/c.json: no such file or directory$"),
])
def test_loading_what_is_not_an_image_archive(daemon: Daemon, client: docker.DockerClient, body: bytes,
                                              message: str) -> None:
    with pytest.raises(docker.errors.ImageLoadError, match=message):
        client.images.load(body)
    refused = daemon.docker("load", input=body)  # the CLI prints the stream's error as it is and exits 1
    assert refused.returncode == 1, refused.stdout
    assert re.match(message, refused.stderr.decode().strip().splitlines()[-1])
    assert daemon.alive() and daemon.out("version", "-f", "{{.Server.APIVersion}}").strip()


def _names(client: docker.DockerClient, ref: str) -> tuple:
    attrs = client.images.get(ref).attrs
    return sorted(attrs["RepoTags"]), sorted(attrs["RepoDigests"])


def test_repo_tags_and_digests_as_dockerd_reports_them(daemon: Daemon, client: docker.DockerClient, image: str,
                                                      registry: Registry, tmp_path: Path) -> None:
    remote = f"{registry.host}/roundtrip/names"
    image_id = _built(daemon, image, tmp_path, "roundtrip/names:" + TAG, "names")
    daemon.out("tag", "roundtrip/names:" + TAG, "roundtrip/other:" + TAG)
    daemon.out("tag", image_id, remote + ":1")
    assert _names(client, image_id) == (sorted([remote + ":1", "roundtrip/names:" + TAG, "roundtrip/other:" + TAG]),
                                        [])
    digest = daemon.out("push", remote + ":1").split("digest: ")[1].split()[0]
    assert _names(client, image_id)[1] == [f"{remote}@{digest}"]
    # removing the repository's last tag drops its digest reference too; the image stays for its other tags
    assert daemon.out("rmi", remote + ":1").splitlines() == [f"Untagged: {remote}:1",
                                                             f"Untagged: {remote}@{digest}"]
    assert _names(client, image_id) == (["roundtrip/names:" + TAG, "roundtrip/other:" + TAG], [])
    daemon.out("pull", remote + ":1")
    assert _names(client, image_id) == (sorted([remote + ":1", "roundtrip/names:" + TAG, "roundtrip/other:" + TAG]),
                                        [f"{remote}@{digest}"])
    # the tag moves to another image: the old one keeps the digest reference, as `docker images` shows "<none>"
    other_id = _built(daemon, image, tmp_path, remote + ":1", "moved")
    assert _names(client, other_id) == ([remote + ":1"], [])
    assert _names(client, image_id)[1] == [f"{remote}@{digest}"]
    daemon.out("rmi", "roundtrip/names:" + TAG, "roundtrip/other:" + TAG)
    listed = {item["Id"]: item for item in client.api.images()}
    assert listed[image_id]["RepoTags"] == [] and listed[image_id]["RepoDigests"] == [f"{remote}@{digest}"]
    old = docker.APIClient(base_url=daemon.host, version="1.41")
    try:  # before API 1.43 dockerd wrote null for no tags, and placeholders for an image with no name at all
        assert {item["Id"]: item for item in old.images()}[image_id]["RepoTags"] is None
        daemon.out("rmi", f"{remote}@{digest}")
        dangling = _built(daemon, image, tmp_path, "roundtrip/dangling:" + TAG, "dangling")
        _built(daemon, image, tmp_path, "roundtrip/dangling:" + TAG, "replaced")
        entry = {item["Id"]: item for item in old.images()}[dangling]
        assert entry["RepoTags"] == ["<none>:<none>"] and entry["RepoDigests"] == ["<none>@<none>"]
        fresh = {item["Id"]: item for item in client.api.images()}[dangling]
        assert fresh["RepoTags"] == [] and fresh["RepoDigests"] == []
    finally:
        old.close()
    daemon.out("rmi", remote + ":1", "roundtrip/dangling:" + TAG)
    daemon.docker("image", "prune", "-f")
