"""``GET /distribution/{name}/json`` against Debian's docker-registry on loopback, with docker-py and the raw API:
the manifest descriptor and platforms the registry serves, credentials passed on, dockerd's refusals."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator

import docker
import pytest

from tests.support.daemon import TAG, Daemon
from tests.support.registry import Registry, start_registry

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CREDENTIALS = {"username": "alice", "password": "s3cret"}


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    folder = tmp_path_factory.mktemp("distribution")
    open_registry = start_registry(str(folder / "open"))
    private = start_registry(str(folder / "private"), users={CREDENTIALS["username"]: CREDENTIALS["password"]})
    yield open_registry, private
    open_registry.stop()
    private.stop()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[docker.DockerClient]:
    instance = docker.DockerClient(base_url=daemon.host, version="auto", timeout=60)
    yield instance
    instance.close()


def _push(daemon: Daemon, image: str, target: str, *extra: str) -> str:
    daemon.out("tag", image, target)
    try:
        pushed = daemon.out(*extra, "push", target)
    finally:
        daemon.out("rmi", target)
    return pushed.split("digest: ")[1].split()[0]


def _raw(client: docker.DockerClient, name: str, auth: dict | None = None):
    headers = {"X-Registry-Auth": docker.auth.encode_header(auth)} if auth else {}
    return client.api.get(client.api._url("/distribution/{0}/json", name), headers=headers)


def test_descriptor_and_platform_of_an_image(client: docker.DockerClient, daemon: Daemon, image: str,
                                             registries: tuple) -> None:
    registry: Registry = registries[0]
    target = f"{registry.host}/dist/app:{TAG}"
    digest = _push(daemon, image, target)
    data = client.images.get_registry_data(target)
    assert data.id == digest
    assert data.attrs["Descriptor"]["mediaType"] == MANIFEST_V2
    assert data.attrs["Platforms"] == [{"architecture": "amd64", "os": "linux"}]
    assert data.has_platform("linux/amd64") and not data.has_platform("linux/arm64")
    manifest = urllib.request.urlopen(urllib.request.Request(
        f"http://{registry.host}/v2/dist/app/manifests/{TAG}", headers={"Accept": MANIFEST_V2})).read()
    assert data.attrs["Descriptor"] == {"mediaType": MANIFEST_V2, "digest": digest, "size": len(manifest)}
    by_digest = _raw(client, f"{registry.host}/dist/app@{digest}").json()
    assert by_digest == data.attrs


def test_platforms_of_an_index(client: docker.DockerClient, daemon: Daemon, image: str, registries: tuple) -> None:
    registry: Registry = registries[0]
    digest = _push(daemon, image, f"{registry.host}/dist/multi:single")
    size = len(urllib.request.urlopen(urllib.request.Request(
        f"http://{registry.host}/v2/dist/multi/manifests/single", headers={"Accept": MANIFEST_V2})).read())
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": MANIFEST_V2, "digest": digest, "size": size,
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": MANIFEST_V2, "digest": digest, "size": size,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}).encode()
    urllib.request.urlopen(urllib.request.Request(f"http://{registry.host}/v2/dist/multi/manifests/index",
                                                  data=index, method="PUT", headers={"Content-Type": OCI_INDEX}))
    data = client.images.get_registry_data(f"{registry.host}/dist/multi:index")
    assert data.attrs["Descriptor"] == {"mediaType": OCI_INDEX, "digest": "sha256:" + hashlib.sha256(index).hexdigest(),
                                        "size": len(index)}
    assert data.attrs["Platforms"] == [{"architecture": "amd64", "os": "linux"},
                                       {"architecture": "arm64", "os": "linux", "variant": "v8"}]
    assert data.has_platform("linux/arm64/v8")


def test_credentials_are_used_and_required(client: docker.DockerClient, daemon: Daemon, image: str,
                                           registries: tuple) -> None:
    private: Registry = registries[1]
    target = f"{private.host}/dist/secret:{TAG}"
    login = daemon.docker("login", "-u", CREDENTIALS["username"], "--password-stdin", private.host,
                          input=CREDENTIALS["password"].encode())
    assert login.returncode == 0, login.stderr
    try:
        digest = _push(daemon, image, target)
    finally:
        daemon.out("logout", private.host)
    auth = dict(CREDENTIALS, serveraddress=private.host)
    assert client.images.get_registry_data(target, auth_config=auth).id == digest
    refused = _raw(client, target)
    assert refused.status_code == 401 and "unauthorized: authentication required" in refused.json()["message"]
    wrong = _raw(client, target, dict(auth, password="nope"))
    assert wrong.status_code == 401


def test_refusals_as_dockerd(client: docker.DockerClient, image: str, registries: tuple) -> None:
    registry: Registry = registries[0]
    missing = _raw(client, f"{registry.host}/dist/app:no-such-tag")
    assert missing.status_code == 404 and missing.json()["message"] == "manifest unknown: manifest unknown"
    with pytest.raises(docker.errors.NotFound):
        client.images.get_registry_data(f"{registry.host}/dist/nothing:1")
    image_id = client.images.get(image).id
    full_id = _raw(client, image_id)
    assert full_id.status_code == 500 and full_id.json()["message"] == "no manifest found for full image ID"
    bad = _raw(client, "UPPER/Case")
    assert bad.status_code == 400
