"""What an attacker with write access to the registry (or the image) may try against verification and scanning."""

from __future__ import annotations

import io
import json
import struct

import pytest

from machines.runtime.errors import Forbidden, InvalidParameter
from machines.runtime.images import registry as registry_mod
from machines.runtime.images import signing, trust
from machines.runtime.images.reference import parse
from machines.runtime.images.scan.inventory import scan_layers
from tests.scan import fixtures
from tests.trust.conftest import drop_all_images, push_image, run_machines, write_policy


def _sign(image, keypair):
    private, _, secret = keypair
    assert run_machines("trust", "sign", image, "--key", str(private), "--passphrase-file", str(secret)).code == 0


def _policy(service, registry, public, identity=None):
    rule = {"type": "sigstoreSigned", "keyPath": str(public)}
    if identity:
        rule["signedIdentity"] = {"type": identity}
    write_policy(service, {"default": [{"type": "reject"}], "transports": {"docker": {registry.host: [rule]}}})


def _attachment(image, digest):
    session = registry_mod.Session(parse(image), {}, registry_mod.RegistryOptions(), "pull,push")
    status, body = trust.session_fetch(session)(f"/v2/{session.ref.path}/manifests/{trust.signature_tag(digest)}",
                                                trust.MEDIA_OCI_MANIFEST)
    assert status == 200
    return session, json.loads(body)


def test_a_signature_replayed_into_another_repository_is_refused(service, store, registry, rootfs_tar, keypair):
    """The same image pushed to two repositories has one digest: a signature for one must not admit the other."""
    mine, theirs = f"{registry.host}/team/app:v1", f"{registry.host}/evil/app:v1"
    digest = push_image(service, mine, rootfs_tar)
    store.tag(mine, f"{registry.host}/evil/app", "v1")
    assert list(service.push(theirs))[-1]["aux"]["Digest"] == digest
    _sign(mine, keypair)
    source, manifest = _attachment(mine, digest)
    target = registry_mod.Session(parse(theirs), {}, registry_mod.RegistryOptions(), "pull,push")
    for descriptor in [manifest["config"], *manifest["layers"]]:  # copy the blobs and the attachment across
        status, blob = trust.session_fetch(source)(f"/v2/team/app/blobs/{descriptor['digest']}", "*/*")
        assert signing._put_blob(target, blob)["digest"] == descriptor["digest"]
    resp = target.request("PUT", f"/v2/evil/app/manifests/{trust.signature_tag(digest)}",
                          {"Content-Type": trust.MEDIA_OCI_MANIFEST}, json.dumps(manifest).encode())
    resp.read()
    resp.close()
    drop_all_images(store)
    for identity in (None, "matchRepository"):
        _policy(service, registry, keypair[1], identity)
        with pytest.raises(Forbidden) as refused:
            list(service.pull(theirs))
        assert str(refused.value) == (f'{theirs}: Source image rejected: Signature for identity "{mine}" is not '
                                      "accepted")
    list(service.pull(mine))  # the genuine one still passes


def test_a_payload_changed_on_the_registry_disk_proves_nothing(service, store, registry, rootfs_tar, keypair):
    image = f"{registry.host}/team/app:v1"
    digest = push_image(service, image, rootfs_tar)
    _sign(image, keypair)
    _, manifest = _attachment(image, digest)
    payload_path = registry.blob_path(manifest["layers"][0]["digest"])
    with open(payload_path, "rb") as f:
        payload = json.loads(f.read())
    payload["critical"]["identity"]["docker-reference"] = f"{registry.host}/team/app:anything"
    with open(payload_path, "w") as f:
        json.dump(payload, f)
    drop_all_images(store)
    _policy(service, registry, keypair[1])
    with pytest.raises(Forbidden) as refused:
        list(service.pull(image))
    assert str(refused.value) == f"{image}: Source image rejected: A signature was required, but no signature exists"


def test_junk_layers_in_the_attachment_are_skipped_not_trusted(service, store, registry, rootfs_tar, keypair):
    image = f"{registry.host}/team/app:v1"
    digest = push_image(service, image, rootfs_tar)
    _sign(image, keypair)
    session, manifest = _attachment(image, digest)
    good = manifest["layers"][0]
    manifest["layers"] = [dict(good, annotations={trust.COSIGN_SIGNATURE_ANNOTATION: "%%% not base64"}),
                          dict(good, mediaType="application/octet-stream")]
    resp = session.request("PUT", f"/v2/team/app/manifests/{trust.signature_tag(digest)}",
                           {"Content-Type": trust.MEDIA_OCI_MANIFEST}, json.dumps(manifest).encode())
    resp.read()
    resp.close()
    assert resp.status == 201
    drop_all_images(store)
    _policy(service, registry, keypair[1])
    with pytest.raises(Forbidden, match="no signature exists"):
        list(service.pull(image))
    _sign(image, keypair)  # a good signature added next to the junk
    list(service.pull(image))


def test_a_non_key_as_public_key_is_one_clear_line(tmp_path):
    key = tmp_path / "key.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    result = run_machines("trust", "verify", "127.0.0.1:1/x:1", "--key", str(key))
    assert (result.code, result.err.strip()) == (1, "Error: public key: expected one DER SEQUENCE")


def test_the_scanner_survives_hostile_package_files():
    deep = b"[" * 100000 + b"]" * 100000
    layer = fixtures.layer({
        "etc/os-release": b"ID=alpine\nVERSION_ID=3.16.0\n",
        "app/node_modules/deep/package.json": deep,
        "app/node_modules/odd/package.json": b'{"name": 1, "version": ["x"]}',
        "lib/apk/db/installed": b"P:only-a-name\n\nnot a field\nP:ok\nV:1.0-r0\n",
        "var/lib/rpm/rpmdb.sqlite": b"SQLite format 3\x00 but truncated",
        "usr/bin/fake-go": b"\x7fELF" + b"\0" * 2000 + b"\xff Go buildinf:\x08\x02" + b"\0" * 16 + b"\xff" * 20,
        "usr/lib/python3/site-packages/x.dist-info/METADATA": b"\xff\xfe not headers",
    }, {"usr/bin/fake-go": 0o755})
    found = scan_layers([io.BytesIO(layer)])
    assert {(p.kind, p.name, p.version) for p in found.packages} == {("apk", "ok", "1.0-r0")}
    from machines.runtime.images.scan.rpmdb import rpm_header

    assert rpm_header(fixtures.rpm_header({1000: "x"})[:8] + b"\xff" * 40) == {}  # entries pointing nowhere
    with pytest.raises(ValueError, match="truncated"):
        rpm_header(struct.pack(">II", 1000, 10) + b"\0" * 64)  # more entries than bytes


def test_malformed_attachment_entries_are_no_signatures():
    digest = "sha256:" + "a" * 64
    entries = [None, [], {"mediaType": trust.SIMPLESIGNING_MEDIA, "size": "big"},
               {"mediaType": trust.SIMPLESIGNING_MEDIA, "annotations": "x", "digest": digest},
               {"mediaType": trust.SIMPLESIGNING_MEDIA, "annotations": {trust.COSIGN_SIGNATURE_ANNOTATION: "AA=="},
                "digest": "sha256:../../../v2/_catalog"}]
    asked = []

    def fetch(path, accept):
        asked.append(path)
        return (200, json.dumps({"layers": entries}).encode()) if "/manifests/" in path else (200, b"x")

    assert trust.sigstore_signatures(fetch, "team/app", digest) == []
    assert asked == [f"/v2/team/app/manifests/{trust.signature_tag(digest)}"]  # no blob fetched for any of them
    with pytest.raises(InvalidParameter, match="invalid signature manifest"):
        trust.sigstore_signatures(lambda path, accept: (200, b'{"layers": {"a": 1}}'), "team/app", digest)
