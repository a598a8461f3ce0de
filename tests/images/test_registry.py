"""Push to and pull from a real registry (Debian's docker-registry on loopback), with digests verified."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os

import pytest

from machines.runtime.errors import Conflict, InvalidParameter, NotFound
from machines.runtime.images import registry as registry_mod
from machines.runtime.images.media import host_platform
from machines.runtime.images.registry import Unauthorized
from machines.runtime.images.service import ImageService
from machines.runtime.images.store import ImageStore
from tests.support.registry import start_registry


@pytest.fixture
def registry(tmp_path):
    reg = start_registry(str(tmp_path / "registry"))
    yield reg
    reg.stop()


@pytest.fixture
def auth_registry(tmp_path):
    reg = start_registry(str(tmp_path / "auth-registry"), users={"alice": "s3cret"})
    yield reg
    reg.stop()


def _layered_image(store, busybox_tar, tmp_path, tag):
    """busybox plus one committed layer: two layers, so parallel transfer and chain IDs are exercised."""
    base = store.resolve(store.import_tar(io.BytesIO(busybox_tar)))
    upper = tmp_path / ("upper-" + tag.replace("/", "_").replace(":", "_"))
    upper.mkdir()
    (upper / "hello.txt").write_text("hello " * 5000)
    return store.commit(str(upper), base, {"Cmd": ["cat", "/hello.txt"]}, tag)


def _wipe(store):
    """Remove every image (children before parents), as ``docker rmi -f $(docker images -aq)`` would."""
    while store.list(all=True):
        for summary in store.list(all=True):
            try:
                store.remove(summary["Id"], force=True)
            except (Conflict, NotFound):
                continue  # a child first / already deleted with its child


def test_push_remove_pull_round_trip(service, store, registry, busybox_tar, tmp_path):
    tag = f"{registry.host}/team/app:v1"
    image = _layered_image(store, busybox_tar, tmp_path, tag)
    pushed = list(service.push(tag))
    assert pushed[0] == {"status": f"The push refers to repository [{registry.host}/team/app]"}
    statuses = [m.get("status") for m in pushed]
    assert statuses.count("Pushed") == 2 and "Preparing" in statuses
    aux = pushed[-1]["aux"]
    assert aux["Tag"] == "v1" and aux["Digest"].startswith("sha256:") and aux["Size"] > 0
    assert statuses[-2] == f'v1: digest: {aux["Digest"]} size: {aux["Size"]}'
    again = [m.get("status") for m in service.push(tag)]
    assert again.count("Layer already exists") == 2

    _wipe(store)
    assert os.listdir(os.path.join(store.root, "layers")) == []

    messages = list(service.pull(tag))
    statuses = [m["status"] for m in messages]
    assert messages[0] == {"status": "Pulling from team/app", "id": "v1"}
    for step in ("Pulling fs layer", "Downloading", "Verifying Checksum", "Download complete", "Extracting",
                 "Pull complete"):
        assert step in statuses, step
    assert statuses[-2:] == [f"Digest: {aux['Digest']}", f"Status: Downloaded newer image for {tag}"]
    downloading = next(m for m in messages if m["status"] == "Downloading")
    assert set(downloading["progressDetail"]) == {"current", "total"} and len(downloading["id"]) == 12
    pulled = store.resolve(tag)
    assert pulled.id == image.id and pulled.repo_digests == [f"{registry.host}/team/app@{aux['Digest']}"]
    assert open(os.path.join(pulled.layer_dirs()[1], "hello.txt")).read() == "hello " * 5000
    assert list(service.pull(tag))[-1] == {"status": f"Status: Image is up to date for {tag}"}
    # pull by digest as well
    by_digest = f"{registry.host}/team/app@{aux['Digest']}"
    assert list(service.pull(by_digest))[-1]["status"].startswith("Status: Image is up to date")


def test_corrupted_blob_is_refused_and_nothing_is_left(service, store, registry, busybox_tar, tmp_path):
    tag = f"{registry.host}/corrupt:1"
    image = _layered_image(store, busybox_tar, tmp_path, tag)
    list(service.push(tag))
    gz_digest = json.load(open(os.path.join(image.layers()[1].path, "push.json")))["digest"]
    blob = registry.blob_path(gz_digest)
    data = bytearray(open(blob, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(blob, "wb").write(bytes(data))
    _wipe(store)
    with pytest.raises(InvalidParameter, match="filesystem layer verification failed for digest " + gz_digest):
        list(service.pull(tag))
    assert store.list(all=True) == []
    store.prune()  # the good layer that arrived stays for a retry until pruned
    assert os.listdir(os.path.join(store.root, "layers")) == []
    # the corrupt download is gone; an interrupted good one may stay to be resumed
    assert gz_digest[7:] + ".partial" not in os.listdir(os.path.join(store.root, "downloads"))


def test_missing_images_fail_before_any_progress_is_streamed(service, store, registry):
    with pytest.raises(NotFound, match=f"manifest for {registry.host}/nothing:latest not found"):
        service.pull(f"{registry.host}/nothing")  # raised by the call itself: the API can answer 404
    with pytest.raises(NotFound, match=f"An image does not exist locally with the tag: {registry.host}/nothing"):
        service.push(f"{registry.host}/nothing:1")


def test_manifest_list_picks_host_platform_and_skips_attestations(service, store, registry, busybox_tar, tmp_path):
    tag = f"{registry.host}/multi:single"
    image = _layered_image(store, busybox_tar, tmp_path, tag)
    aux = list(service.push(tag))[-1]["aux"]
    session = registry_mod.Session(registry_mod.reference.parse(tag), {}, service.registry_options())
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": aux["Digest"],
         "size": aux["Size"], "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": aux["Digest"],
         "size": aux["Size"], "platform": host_platform()}]}).encode()
    resp = session.request("PUT", "/v2/multi/manifests/index", {
        "Content-Type": "application/vnd.oci.image.index.v1+json"}, index)
    resp.close()
    assert resp.status == 201
    _wipe(store)
    messages = list(service.pull(f"{registry.host}/multi:index"))
    assert messages[-2]["status"] == "Digest: sha256:" + hashlib.sha256(index).hexdigest()
    assert store.resolve(f"{registry.host}/multi:index").id == image.id
    with pytest.raises(NotFound, match="no matching manifest for linux/s390x"):
        list(service.pull(f"{registry.host}/multi:index", platform="linux/s390x"))


def test_basic_auth_registry(service, store, auth_registry, busybox_tar):
    tag = f"{auth_registry.host}/private:1"
    store.import_tar(io.BytesIO(busybox_tar), tag)
    good = {"username": "alice", "password": "s3cret", "serveraddress": auth_registry.host}
    bad = dict(good, password="wrong")
    assert service.login(good) == {"Status": "Login Succeeded", "IdentityToken": ""}
    with pytest.raises(Unauthorized, match=f"login attempt to http://{auth_registry.host}/v2/ failed with status: 401 Unauthorized"):
        service.login(bad)
    with pytest.raises(Unauthorized, match="unauthorized: authentication required"):
        list(service.push(tag))
    assert list(service.push(tag, auth=good))[-1]["aux"]["Tag"] == "1"
    with pytest.raises(Unauthorized, match="unauthorized"):
        list(service.pull(tag, auth=bad))
    header = base64.urlsafe_b64encode(json.dumps(good).encode()).decode().rstrip("=")
    assert list(service.pull(tag, auth=registry_mod.decode_auth(header)))[-1]["status"].startswith("Status:")


def test_registry_auth_header_decoding():
    assert registry_mod.decode_auth("e30=") == {} and registry_mod.decode_auth(None) == {}
    with pytest.raises(InvalidParameter):
        registry_mod.decode_auth("!!!")
    cfg = {"https://index.docker.io/v1/": {"username": "u"}, "localhost:5000": {"username": "l"}}
    assert registry_mod.auth_for_host(cfg, "docker.io") == {"username": "u"}
    assert registry_mod.auth_for_host(cfg, "localhost:5000") == {"username": "l"}
    opts = registry_mod.RegistryOptions(["10.0.0.0/8", "reg.example:5000"])
    assert opts.is_insecure("127.0.0.1:5000") and opts.is_insecure("localhost:5000")
    assert opts.is_insecure("10.1.2.3:5000") and opts.is_insecure("reg.example:5000")
    assert not opts.is_insecure("registry-1.docker.io") and not opts.is_insecure("192.168.1.1:5000")


def test_removing_the_last_tag_drops_digest_references_of_that_repository(service, store, registry, busybox_tar):
    tag = f"{registry.host}/digested:1"
    image_id = store.import_tar(io.BytesIO(busybox_tar), tag)
    digest = list(service.push(tag))[-1]["aux"]["Digest"]
    layer = "sha256:" + hashlib.sha256(busybox_tar).hexdigest()
    assert store.remove(tag) == [{"Untagged": tag}, {"Untagged": f"{registry.host}/digested@{digest}"},
                                 {"Deleted": image_id}, {"Deleted": layer}]


def test_push_reuses_the_registry_blob_of_a_layer_that_was_already_present(service, store, registry, busybox_tar,
                                                                           tmp_path):
    source = f"{registry.host}/source:1"
    seeded = ImageStore(str(tmp_path / "other-store"))
    other_gzip = gzip.compress(busybox_tar, compresslevel=1, mtime=1)  # not what our own push would make
    seeded.import_tar(io.BytesIO(other_gzip), source, ["CMD [\"true\"]"])
    list(ImageService(seeded).push(source))
    store.import_tar(io.BytesIO(busybox_tar), "local:1")  # same diff ID, kept uncompressed here
    pulled = [m["status"] for m in service.pull(source)]
    assert "Already exists" in pulled
    messages = [m.get("status") for m in service.push(source)]
    assert messages.count("Layer already exists") == 1 and "Pushed" not in messages
