"""The runtime's trust policy (containers-policy.json at <data root>/policy.json) on pull, run and build FROM."""

from __future__ import annotations

import base64
import io
import json

import pytest

from machines.runtime.errors import Forbidden, InvalidParameter
from machines.runtime.images import trust
from machines.runtime.images.reference import parse
from machines.runtime.images.service import ImageService
from machines.runtime.images.store import ImageStore
from tests.trust.conftest import drop_all_images, push_image, run_machines, write_policy

UNSIGNED = "A signature was required, but no signature exists"


def _sign(image, keypair):
    private, _, secret = keypair
    result = run_machines("trust", "sign", image, "--key", str(private), "--passphrase-file", str(secret))
    assert result.code == 0, result.err


def _sigstore_policy(registry, public, **extra):
    rule = {"type": "sigstoreSigned", "keyPath": str(public), **extra}
    return {"default": [{"type": "reject"}],
            "transports": {"docker": {f"{registry.host}/signed": [rule],
                                      f"{registry.host}/open": [{"type": "insecureAcceptAnything"}]},
                           "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}}}


def _pull(service, image):
    return list(service.pull(image))


def test_signed_image_is_pulled_and_runs_unsigned_and_foreign_are_refused(service, store, registry, rootfs_tar,
                                                                           keypair, tmp_path):
    signed, unsigned = f"{registry.host}/signed/app:v1", f"{registry.host}/signed/app:v2"
    digest = push_image(service, signed, rootfs_tar, "one")
    push_image(service, unsigned, rootfs_tar, "two")
    _sign(signed, keypair)
    drop_all_images(store)
    write_policy(service, _sigstore_policy(registry, keypair[1]))

    assert _pull(service, signed)[-1]["status"] == f"Status: Downloaded newer image for {signed}"
    service.admit(signed, store.resolve(signed))  # accepted for run: verified under this policy
    with pytest.raises(Forbidden) as refused:
        _pull(service, unsigned)
    assert str(refused.value) == f"{unsigned}: Source image rejected: {UNSIGNED}"
    assert not store.exists(unsigned)

    other = tmp_path / "other"
    assert run_machines("trust", "keygen", str(other), "--passphrase-file", str(keypair[2])).code == 0
    write_policy(service, _sigstore_policy(registry, f"{other}.pub"))
    with pytest.raises(Forbidden) as foreign:
        _pull(service, signed)
    assert str(foreign.value) == (f"{signed}: Source image rejected: "
                                  "cryptographic signature verification failed: invalid signature")
    # the copy pulled under the old policy may not run under the new one
    with pytest.raises(Forbidden) as stale:
        service.admit(signed, store.resolve(signed))
    assert str(stale.value) == (f"{signed}: Source image rejected: it was not verified under the current trust "
                                "policy; pull it again")
    assert digest in store.resolve(signed).repo_digests[0]


def test_a_signature_moved_onto_another_manifest_is_refused(service, store, registry, rootfs_tar, keypair):
    good, evil = f"{registry.host}/signed/app:good", f"{registry.host}/signed/app:evil"
    good_digest = push_image(service, good, rootfs_tar, "good")
    evil_digest = push_image(service, evil, rootfs_tar, "evil")
    _sign(good, keypair)
    # the attacker copies the valid attachment to the tag that belongs to their manifest
    from machines.runtime.images import registry as registry_mod

    session = registry_mod.Session(parse(good), {}, registry_mod.RegistryOptions(), "pull,push")
    status, attachment = trust.session_fetch(session)(f"/v2/signed/app/manifests/{trust.signature_tag(good_digest)}",
                                                      trust.MEDIA_OCI_MANIFEST)
    assert status == 200
    resp = session.request("PUT", f"/v2/signed/app/manifests/{trust.signature_tag(evil_digest)}",
                           {"Content-Type": trust.MEDIA_OCI_MANIFEST}, attachment)
    resp.read()
    resp.close()
    assert resp.status == 201
    drop_all_images(store)
    write_policy(service, _sigstore_policy(registry, keypair[1]))
    with pytest.raises(Forbidden) as refused:
        _pull(service, evil)
    assert str(refused.value) == f"{evil}: Source image rejected: Signature for digest {good_digest} does not match"


def test_a_tampered_manifest_in_the_registry_is_refused(service, store, registry, rootfs_tar, keypair):
    image = f"{registry.host}/signed/app:v1"
    digest = push_image(service, image, rootfs_tar, "one")
    _sign(image, keypair)
    drop_all_images(store)
    write_policy(service, _sigstore_policy(registry, keypair[1]))
    blob = registry.blob_path(digest)
    with open(blob, "rb") as f:
        manifest = json.loads(f.read())
    manifest["annotations"] = {"evil": "yes"}
    with open(blob, "wb") as f:
        f.write(json.dumps(manifest).encode())
    with pytest.raises(InvalidParameter) as refused:  # the registry still claims the signed digest
        _pull(service, image)
    assert str(refused.value) == f"manifest verification failed for digest {digest}"
    assert not store.exists(image)


def test_identity_rules_and_reject_and_open_scopes(service, store, registry, rootfs_tar, keypair):
    tagged = f"{registry.host}/signed/app:v1"
    digest = push_image(service, tagged, rootfs_tar, "one")
    retagged = f"{registry.host}/signed/app:other"
    store.tag(tagged, f"{registry.host}/signed/app", "other")
    list(service.push(retagged))
    _sign(tagged, keypair)  # the signature names :v1
    open_image = f"{registry.host}/open/app:v1"
    store.tag(tagged, f"{registry.host}/open/app", "v1")
    list(service.push(open_image))
    elsewhere = f"{registry.host}/elsewhere:v1"
    store.tag(tagged, f"{registry.host}/elsewhere", "v1")
    list(service.push(elsewhere))
    drop_all_images(store)

    write_policy(service, _sigstore_policy(registry, keypair[1]))  # default identity: matchRepoDigestOrExact
    with pytest.raises(Forbidden) as wrong_tag:
        _pull(service, retagged)
    assert str(wrong_tag.value) == (f'{retagged}: Source image rejected: Signature for identity "{tagged}" is not '
                                    "accepted")
    _pull(service, f"{registry.host}/signed/app@{digest}")  # by digest: the repository is enough
    write_policy(service, _sigstore_policy(registry, keypair[1], signedIdentity={"type": "matchRepository"}))
    _pull(service, retagged)
    _pull(service, open_image)  # insecureAcceptAnything
    with pytest.raises(Forbidden) as rejected:
        _pull(service, elsewhere)
    assert str(rejected.value) == (f"{elsewhere}: Source image rejected: Running image docker://{elsewhere} is "
                                   "rejected by policy.")


def test_keydata_policies_and_local_images(service, store, registry, rootfs_tar, keypair):
    image = f"{registry.host}/signed/app:v1"
    push_image(service, image, rootfs_tar, "one")
    _sign(image, keypair)
    drop_all_images(store)
    policy = _sigstore_policy(registry, keypair[1])
    rule = policy["transports"]["docker"][f"{registry.host}/signed"][0]
    rule.pop("keyPath")
    rule["keyData"] = base64.b64encode(keypair[1].read_bytes()).decode()
    write_policy(service, policy)
    _pull(service, image)

    local = store.resolve(store.import_tar(io.BytesIO(rootfs_tar), "built:locally"))
    service.admit("built:locally", local)  # the docker-daemon entry accepts local images
    del policy["transports"]["docker-daemon"]
    write_policy(service, policy)  # now the default (reject) decides for them
    with pytest.raises(Forbidden) as refused:
        service.admit("built:locally", local)
    assert str(refused.value) == ("built:locally: Source image rejected: the trust policy's docker-daemon entry "
                                  "does not accept local images")


@pytest.mark.parametrize("doc, message", [
    (b"{", "invalid trust policy: not JSON"),
    (b'{"default": []}', "invalid trust policy: default: a non-empty list of requirements is needed"),
    (b'{"default": [{"type": "trustMe"}]}', "invalid trust policy: default: unknown requirement type 'trustMe'"),
    (b'{"default": [{"type": "sigstoreSigned"}]}',
     "invalid trust policy: default: sigstoreSigned needs exactly one of keyPath, keyPaths or keyData"),
    (b'{"default": [{"type": "sigstoreSigned", "keyData": "bm90IGEga2V5"}]}',
     "invalid trust policy: default: not a PEM public key"),
    (b'{"default": [{"type": "sigstoreSigned", "keyPath": "/nonexistent.pub"}]}',
     "invalid trust policy: cannot read key /nonexistent.pub: No such file or directory"),
])
def test_a_broken_policy_fails_closed(service, store, registry, rootfs_tar, doc, message):
    image = f"{registry.host}/open/app:v1"
    push_image(service, image, rootfs_tar)
    drop_all_images(store)
    with open(service.trust.path, "wb") as f:
        f.write(doc)
    with pytest.raises(InvalidParameter) as refused:
        _pull(service, image)
    assert str(refused.value) == message
    assert not store.exists(image)


def test_without_a_policy_everything_is_accepted(tmp_path, registry, rootfs_tar):
    service = ImageService(ImageStore(str(tmp_path / "d" / "image")))
    image = f"{registry.host}/anything:v1"
    push_image(service, image, rootfs_tar)
    drop_all_images(service.store)
    _pull(service, image)
    service.admit(image, service.store.resolve(image))
