"""GPG simple signatures kept by the registry (its signature extension, as OpenShift serves it), written and read
by Debian's skopeo 1.9 and by machines (workstation and runtime), and what a hostile registry may answer."""

from __future__ import annotations

import base64
import json

import pytest

from machines.runtime.errors import Forbidden
from machines.runtime.images import registry as registry_client
from machines.runtime.images import sigext
from machines.runtime.images.reference import parse
from tests.support import busybox
from tests.trust.conftest import UNSIGNED, drop_all_images, push_image, run_machines, skopeo, write_policy

pytestmark = pytest.mark.usefixtures("interop_tools")
EXTENSION_LIMIT = 4 << 20


def _policy_file(tmp_path, who, name: str):
    """A signedBy policy for ``who``'s key, as skopeo's --policy reads it; returns (policy path, key path)."""
    key = tmp_path / f"{name}.asc"
    key.write_bytes(who.public)
    policy = tmp_path / f"{name}-policy.json"
    policy.write_text(json.dumps({"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key)}]}))
    return policy, key


def _enforce(service, host: str, key) -> None:
    write_policy(service, {"default": [{"type": "reject"}], "transports": {"docker": {host: [
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key)}]}}})


def _refusal(service, image: str) -> str:
    with pytest.raises(Forbidden) as refused:
        list(service.pull(image))
    return str(refused.value)


def _only_signature(front, digest: str) -> dict:
    (entry,) = front.stored[("team/app", digest)]
    return entry


def test_skopeo_signs_through_the_extension_and_machines_verifies(service, store, front, rootfs_tar, signer,
                                                                  stranger, tmp_path):
    source, signed, unsigned = (f"{front.host}/team/app:{tag}" for tag in ("src", "signed", "unsigned"))
    push_image(service, source, rootfs_tar, "one")
    push_image(service, unsigned, rootfs_tar, "two")
    staging = tmp_path / "staging"  # skopeo would use it if the registry did not advertise the extension
    regd = tmp_path / "registries.d"
    regd.mkdir()
    (regd / "local.yaml").write_text(f"docker:\n  {front.host}:\n    lookaside: file://{staging}\n"
                                     f"    lookaside-staging: file://{staging}\n")
    copied = skopeo("--insecure-policy", "--registries.d", str(regd), "copy", "--sign-by", signer.fingerprint,
                    "--src-tls-verify=false", "--dest-tls-verify=false", f"docker://{source}", f"docker://{signed}",
                    env=signer.env)
    assert copied.returncode == 0, copied.stderr
    assert not staging.exists()
    ((repo, digest),) = front.stored
    entry = _only_signature(front, digest)
    assert repo == "team/app" and entry["type"] == "atomic" and entry["name"].startswith(digest + "@")
    _, release = _policy_file(tmp_path, signer, "release")
    _, foreign = _policy_file(tmp_path, stranger, "stranger")

    ok = run_machines("trust", "verify", signed, "--key", str(release))
    assert (ok.code, ok.out.strip()) == (0, f"Verified OK: {front.host}/team/app@{digest}"), ok.err
    wrong = run_machines("trust", "verify", signed, "--key", str(foreign))
    assert (wrong.code, wrong.err.strip()) == (1, f"Error: {signed}: Invalid GPG signature")
    missing = run_machines("trust", "verify", unsigned, "--key", str(release))
    assert (missing.code, missing.err.strip()) == (1, f"Error: {unsigned}: {UNSIGNED}")

    # the runtime, with no registries.d at all: the registry's extension is where it looks
    drop_all_images(store)
    _enforce(service, f"{front.host}/team", release)
    list(service.pull(signed))
    service.admit(signed, store.resolve(signed))
    assert _refusal(service, unsigned) == f"{unsigned}: Source image rejected: {UNSIGNED}"
    drop_all_images(store)
    _enforce(service, f"{front.host}/team", foreign)
    assert _refusal(service, signed) == f"{signed}: Source image rejected: Invalid GPG signature"

    # tampered in the registry: 16 bytes in the middle of the (compressed) signed message inverted; not one bit,
    # which may fall on deflate padding or on the literal packet's file name, which no OpenPGP signature covers
    content, middle = entry["content"], len(entry["content"]) // 2
    inverted = bytes(b ^ 0xFF for b in content[middle - 8:middle + 8])
    entry["content"] = content[:middle - 8] + inverted + content[middle + 8:]
    _enforce(service, f"{front.host}/team", release)
    assert _refusal(service, signed) == f"{signed}: Source image rejected: Invalid GPG signature"
    tampered = run_machines("trust", "verify", signed, "--key", str(release))
    assert (tampered.code, tampered.err.strip()) == (1, f"Error: {signed}: Invalid GPG signature")


def test_machines_signs_through_the_extension_and_skopeo_verifies(service, store, front, rootfs_tar, signer,
                                                                  stranger, tmp_path):
    image = f"{front.host}/team/app:v2"
    digest = push_image(service, image, rootfs_tar, "two")
    signed = run_machines("trust", "sign", image, "--sign-by", signer.fingerprint, env={"GNUPGHOME": signer.home})
    assert signed.code == 0, signed.err
    assert signed.out.strip() == (f"Signature written to http://{front.host}/extensions/v2/team/app/signatures/"
                                  f"{digest}")
    entry = _only_signature(front, digest)
    assert entry["type"] == "atomic" and len(entry["name"]) == len(digest) + 1 + 32
    empty_regd = tmp_path / "registries.d"
    empty_regd.mkdir()
    for who, expect in ((signer, 0), (stranger, 1)):
        policy, _ = _policy_file(tmp_path, who, who.fingerprint)
        copied = skopeo("--policy", str(policy), "--registries.d", str(empty_regd), "copy", "--src-tls-verify=false",
                        f"docker://{image}", f"dir:{tmp_path / f'out-{expect}'}")
        assert copied.returncode == expect, copied.stderr
        if expect:
            assert "Source image rejected: Invalid GPG signature" in copied.stderr
    drop_all_images(store)
    _enforce(service, front.host, tmp_path / f"{signer.fingerprint}.asc")
    list(service.pull(image))
    service.admit(image, store.resolve(image))


def test_a_signature_for_another_manifest_is_refused_by_machines_and_skopeo(service, store, front, rootfs_tar,
                                                                           signer, tmp_path):
    """A registry (or whoever writes to it) lists image A's signature for image B: the payload names A's digest."""
    mine, other = f"{front.host}/team/app:a", f"{front.host}/team/app:b"
    digest_a = push_image(service, mine, rootfs_tar, "a")
    digest_b = push_image(service, other, rootfs_tar, "b")
    assert run_machines("trust", "sign", mine, "--sign-by", signer.fingerprint,
                        env={"GNUPGHOME": signer.home}).code == 0
    front.stored[("team/app", digest_b)] = [dict(_only_signature(front, digest_a), name=f"{digest_b}@replayed")]
    reason = f"Signature for digest {digest_a} does not match"  # containers/image's words, skopeo's too
    policy, key = _policy_file(tmp_path, signer, "release")
    refused = run_machines("trust", "verify", other, "--key", str(key))
    assert (refused.code, refused.err.strip()) == (1, f"Error: {other}: {reason}")
    drop_all_images(store)
    _enforce(service, front.host, key)
    assert _refusal(service, other) == f"{other}: Source image rejected: {reason}"
    copied = skopeo("--policy", str(policy), "copy", "--src-tls-verify=false", f"docker://{other}",
                    f"dir:{tmp_path / 'out'}")
    assert copied.returncode == 1 and f"Source image rejected: {reason}" in copied.stderr


def _listing(*entries) -> bytes:
    return json.dumps({"signatures": list(entries)}).encode()


def _entry(content: str, **extra) -> dict:
    return {"schemaVersion": 2, "type": "atomic", "name": "sha256:x@y", "content": content, **extra}


# name: (status, body, the reason given); the list's limit is containers/image's 4 MiB
HOSTILE = {
    "huge": (200, b'{"signatures": [' + b" " * EXTENSION_LIMIT + b"]}",
             "downloading signatures for {digest} in {repo}: exceeded maximum allowed size of 4194304 bytes"),
    "not json": (200, b"<html>gateway</html>", "decoding signature list for {digest} in {repo}: not a signature list"),
    "not a list": (200, b'{"signatures": {"a": 1}}',
                   "decoding signature list for {digest} in {repo}: not a signature list"),
    "bad base64": (200, _listing(_entry("%%% not base64 %%%")),
                   "decoding signature list for {digest} in {repo}: illegal base64 data in 'sha256:x@y'"),
    "many": (200, _listing(*[_entry(base64.b64encode(b"x").decode(), name=f"n{i}") for i in range(17)]),
             "the registry lists 17 signatures for {digest}, more than the 16 that are checked"),
    "oversized signature": (200, _listing(_entry(base64.b64encode(b"x" * (65 << 10)).decode())),
                            "signature is too large"),
    "garbage signature": (200, _listing(_entry(base64.b64encode(b"not an OpenPGP message").decode())),
                          "Invalid GPG signature"),
    "other versions and types": (200, _listing(_entry("eA==", schemaVersion=1), _entry("eA==", type="cosign")),
                                 UNSIGNED),
    "error status": (500, b'{"errors": [{"code": "UNKNOWN", "message": "unknown error", "detail": "etcd is down"}]}',
                     "downloading signatures for {digest} in {repo}: unknown: unknown error"),
    "bare 404": (404, b"", "downloading signatures for {digest} in {repo}: HTTP 404"),
}


def test_hostile_signature_lists_are_bounded_and_refused(service, store, front, rootfs_tar, signer, tmp_path):
    image = f"{front.host}/team/app:v1"
    digest = push_image(service, image, rootfs_tar)
    _, key = _policy_file(tmp_path, signer, "release")
    drop_all_images(store)
    _enforce(service, front.host, key)
    for case, (status, body, reason) in HOSTILE.items():
        front.listing = lambda _name, _digest, answer=(status, body): answer
        expected = reason.format(digest=digest, repo=f"{front.host}/team/app")
        assert _refusal(service, image) == f"{image}: Source image rejected: {expected}", case
        verified = run_machines("trust", "verify", image, "--key", str(key))
        assert (verified.code, verified.err.strip()) == (1, f"Error: {image}: {expected}"), case
    assert not store.list(all=True)


def test_signing_beyond_the_checked_number_is_refused(front, service, rootfs_tar, signer):
    image = f"{front.host}/team/app:v1"
    digest = push_image(service, image, rootfs_tar)
    front.stored[("team/app", digest)] = [{"name": f"{digest}@{i}", "type": "atomic", "content": b"x%d" % i}
                                          for i in range(16)]
    refused = run_machines("trust", "sign", image, "--sign-by", signer.fingerprint, env={"GNUPGHOME": signer.home})
    assert (refused.code, refused.err.strip()) == (1, f"Error: {image} already has 16 signatures in the registry")
    assert len(front.stored[("team/app", digest)]) == 16


def test_a_registry_without_the_extension_needs_a_lookaside(registry, service, rootfs_tar, signer, tmp_path):
    image = f"{registry.host}/team/app:v1"
    push_image(service, image, rootfs_tar)
    _, key = _policy_file(tmp_path, signer, "release")
    needed = f"Error: {registry.host} does not support the signature extension (X-Registry-Supports-Signatures): give "
    signed = run_machines("trust", "sign", image, "--sign-by", signer.fingerprint, env={"GNUPGHOME": signer.home})
    assert (signed.code, signed.err.strip()) == (1, needed + "--lookaside DIR")
    verified = run_machines("trust", "verify", image, "--key", str(key))
    assert (verified.code, verified.err.strip()) == (1, needed + "--lookaside DIR|URL")


def test_docker_pull_through_the_daemon_reads_the_extension(daemon, front, signer, stranger, tmp_path):
    """The real docker CLI against the runtime daemon: a signedBy policy and no registries.d at all."""
    signed, unsigned = f"{front.host}/team/app:signed", f"{front.host}/team/app:unsigned"
    for number, name in enumerate((signed, unsigned)):
        daemon.out("import", "--change", f"LABEL n={number}", "-", name, input=busybox.rootfs())
        daemon.out("push", name)
    assert run_machines("trust", "sign", signed, "--sign-by", signer.fingerprint,
                        env={"GNUPGHOME": signer.home}).code == 0
    daemon.out("rmi", signed, unsigned)
    policy = daemon.root / "data" / "policy.json"
    for who, name in ((stranger, "stranger"), (signer, "release")):
        _, key = _policy_file(tmp_path, who, name)
        policy.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {front.host: [
            {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key)}]}}}))
        if who is stranger:
            foreign = daemon.docker("pull", signed)
            assert (foreign.returncode, foreign.stderr.decode().strip()) == (
                1, f"Error response from daemon: {signed}: Source image rejected: Invalid GPG signature")
    assert daemon.out("run", "--rm", signed, "echo", "signed and running").strip() == "signed and running"
    refused = daemon.docker("pull", unsigned)
    assert (refused.returncode, refused.stderr.decode().strip()) == (
        1, f"Error response from daemon: {unsigned}: Source image rejected: {UNSIGNED}")


def test_the_same_signature_is_stored_once(front, service, rootfs_tar):
    """As containers/image: a signature whose very bytes the registry lists already is not added again."""
    image = f"{front.host}/team/app:v1"
    digest = push_image(service, image, rootfs_tar)
    session = registry_client.Session(parse(image), {}, registry_client.RegistryOptions(), "pull,push")
    assert sigext.supported(session)
    for blob in (b"first", b"second", b"first"):
        sigext.store(session, digest, blob)
    assert [e["content"] for e in front.stored[("team/app", digest)]] == [b"first", b"second"]
    assert sigext.signatures(session, digest) == [b"first", b"second"]
