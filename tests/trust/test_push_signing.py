"""Signing on push in the runtime (``<data root>/signing.json``), against Debian's docker-registry on loopback."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from machines.errors import UsageError
from machines.runtime.errors import EngineError
from machines.runtime.images import signing
from machines.runtime.images.reference import parse
from machines.runtime.images.signing import SigningPolicyError
from machines.trust.policy import load_signing_policy
from tests.trust.conftest import push_image, registries_d, run_machines, skopeo

KEY_NAME = "0123456789abcdef.key"


@pytest.fixture
def signing_key(service, tmp_path):
    """A P-256 key installed as the runtime expects (PKCS#8, 0600) and its public key file."""
    key = ec.generate_private_key(ec.SECP256R1())
    folder = Path(service.signing.keys_dir)
    folder.mkdir(mode=0o700, parents=True)
    path = folder / KEY_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    public = tmp_path / "push.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, public


def _policy(service, doc) -> None:
    Path(service.signing.path).write_text(json.dumps(doc))


def test_a_push_in_scope_is_signed_and_one_out_of_scope_is_not(service, registry, rootfs_tar, signing_key):
    _, public = signing_key
    _policy(service, {"docker": {f"{registry.host}/team": {"sign-by-sigstore-private-key": KEY_NAME},
                                 f"{registry.host}/team/scratch": {}}})
    signed, unsigned, scratch = (f"{registry.host}/team/app:v1", f"{registry.host}/other/app:v1",
                                 f"{registry.host}/team/scratch:v1")
    push_image(service, signed, rootfs_tar)
    push_image(service, unsigned, rootfs_tar, marker="other")
    push_image(service, scratch, rootfs_tar, marker="scratch")
    ok = run_machines("trust", "verify", signed, "--key", str(public))
    assert ok.code == 0, ok.err
    for image in (unsigned, scratch):
        refused = run_machines("trust", "verify", image, "--key", str(public))
        assert refused.err.strip() == f"Error: {image}: A signature was required, but no signature exists"


def test_scopes_pick_the_most_specific_entry_and_null_means_unset():
    policy = signing.parse_policy(json.dumps({
        "default-docker": {"sign-by-sigstore-private-key": KEY_NAME},
        "docker": {"r.example/team": {"sign-by-sigstore-private-key": None}, "*.example": {}}}).encode())
    assert signing.entry_for(policy, parse("r.example/team/app:v1")) == {}
    assert signing.entry_for(policy, parse("q.example/app")) == {}
    assert signing.entry_for(policy, parse("docker.io/library/busybox")) == {"sign-by-sigstore-private-key": KEY_NAME}


def test_the_stream_says_it_signs(service, registry, rootfs_tar, signing_key):
    _policy(service, {"default-docker": {"sign-by-sigstore-private-key": KEY_NAME}})
    image = f"{registry.host}/app:v1"
    store = service.store
    store.tag(store.resolve(store.import_tar(io.BytesIO(rootfs_tar))).id, image)
    statuses = [m.get("status") for m in service.push(image)]
    digest = next(s for s in statuses if s and s.startswith("v1: digest: ")).split()[2]
    assert statuses[-2:] == ["Signing manifest using a sigstore signature",
                             f"Signature stored as tag {digest.replace(':', '-')}.sig"]


def test_pushing_every_tag_of_a_repository_signs_each(service, registry, rootfs_tar, signing_key):
    _, public = signing_key
    _policy(service, {"docker": {registry.host: {"sign-by-sigstore-private-key": KEY_NAME}}})
    repo = f"{registry.host}/team/app"
    store = service.store
    image = store.resolve(store.import_tar(io.BytesIO(rootfs_tar)))
    store.tag(image.id, f"{repo}:v1")
    upper = Path(store.root).parent / "upper-two"
    upper.mkdir()
    (upper / "marker").write_text("two")
    store.commit(str(upper), image, None, f"{repo}:v2")
    statuses = [m.get("status") for m in service.push(repo)]  # docker push --all-tags
    assert statuses.count("Signing manifest using a sigstore signature") == 2
    for tag in ("v1", "v2"):
        assert run_machines("trust", "verify", f"{repo}:{tag}", "--key", str(public)).code == 0


@pytest.mark.parametrize("doc, words", [
    ("not json", "invalid signing policy: not JSON"),
    ({"docker": {"x": {"sign-by-cosign": "x.key"}}}, "an entry may only hold sign-by-sigstore-private-key, sign-by and "
                                                      "lookaside-staging"),
    ({"docker": {"x": {"sign-by": "ABCD", "lookaside-staging": "file:///s"}}}, "sign-by must be a full key fingerprint"),
    ({"docker": {"x": {"sign-by": "A" * 40}}}, "sign-by needs lookaside-staging file:///FOLDER"),
    ({"docker": {"x": {"sign-by": "A" * 40, "lookaside-staging": "https://s.example/"}}}, "needs lookaside-staging"),
    ({"docker": {"x": {"sign-by-sigstore-private-key": "../../etc/shadow"}}}, "must name an installed key"),
    ({"transports": {}}, 'only "docker" and "default-docker"'),
])
def test_bad_policies_are_refused(doc, words):
    with pytest.raises(SigningPolicyError) as info:
        signing.parse_policy(doc.encode() if isinstance(doc, str) else json.dumps(doc).encode())
    assert words in str(info.value)


def _push_error(service, image) -> str:
    with pytest.raises(EngineError) as info:
        list(service.push(image))
    return str(info.value)


def test_a_missing_unreadable_or_bad_key_stops_the_push_before_anything_is_sent(service, registry, rootfs_tar,
                                                                                 signing_key):
    path, _ = signing_key
    image = f"{registry.host}/team/app:v1"
    store = service.store
    store.tag(store.resolve(store.import_tar(io.BytesIO(rootfs_tar))).id, image)
    _policy(service, {"docker": {registry.host: {"sign-by-sigstore-private-key": "fedcba9876543210.key"}}})
    assert _push_error(service, image) == (
        f"{registry.host}/team/app: nothing was pushed: creating signature: signing key fedcba9876543210.key: No "
        "such file or directory; install it again with machines set --engine-signing-policy")
    _policy(service, {"docker": {registry.host: {"sign-by-sigstore-private-key": KEY_NAME}}})
    path.chmod(0o644)
    assert "must be a file only the daemon's user can read (0600)" in _push_error(service, image)
    path.chmod(0o600)
    secret = path.read_text()
    path.write_text(secret.replace("PRIVATE KEY", "PUBLIC KEY"))
    message = _push_error(service, image)
    assert message.endswith(f"signing key {KEY_NAME}: not a PEM private key")
    assert "MI" not in message
    with pytest.raises(urllib.error.HTTPError) as nothing:  # not even the manifest went out
        urllib.request.urlopen(f"http://{registry.host}/v2/team/app/manifests/v1")
    assert nothing.value.code == 404


def _install(service, text: str, installed) -> None:
    """What provisioning does on a host: the policy, and each key 0600 in a 0700 folder."""
    folder = Path(service.signing.keys_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, data in installed:
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    Path(service.signing.path).write_text(text)


def test_gpg_simple_signing_on_push_is_read_by_skopeo(service, registry, rootfs_tar, signer, stranger,
                                                       keypair, tmp_path, monkeypatch):
    """A sign-by entry: the workstation exports the key, the runtime signs in a throw-away keyring and stores the
    signature under lookaside-staging, where skopeo's signedBy policy and machines trust verify accept it; an
    entry may sign both ways at once."""
    private, public, secret = keypair
    lookaside = tmp_path / "lookaside"
    policy_file = tmp_path / "signing.yaml"
    policy_file.write_text(f"docker:\n  {registry.host}/team:\n    sign-by: release@example.com\n"
                           f"    lookaside-staging: file://{lookaside}\n"
                           f"    sign-by-sigstore-private-key: {private}\n")
    monkeypatch.setenv("GNUPGHOME", signer.home)
    text, installed = load_signing_policy(str(policy_file), secret)
    assert json.loads(text)["docker"][f"{registry.host}/team"]["sign-by"] == signer.fingerprint
    assert {name for name, _ in installed} >= {f"{signer.fingerprint}.asc", f"{signer.fingerprint}.pass"}
    _install(service, text, installed)

    image = f"{registry.host}/team/app:v1"
    store = service.store
    store.tag(store.resolve(store.import_tar(io.BytesIO(rootfs_tar))).id, image)
    statuses = [m.get("status") for m in service.push(image)]
    assert "Signing manifest using simple signing" in statuses
    stored = next(s for s in statuses if s and s.startswith("Signature stored as /"))
    assert stored.endswith("/signature-1") and "/team/app@sha256=" in stored
    assert run_machines("trust", "verify", image, "--key", str(public)).code == 0  # the sigstore one too

    (tmp_path / "release.asc").write_bytes(signer.public)
    ok = run_machines("trust", "verify", image, "--key", str(tmp_path / "release.asc"), "--lookaside", str(lookaside))
    assert ok.code == 0, ok.err
    regd = registries_d(tmp_path / "registries.d", registry.host, lookaside)
    for who, expect in ((signer, 0), (stranger, 1)):
        (tmp_path / "key.asc").write_bytes(who.public)
        (tmp_path / "policy.json").write_text(json.dumps({"default": [{"type": "signedBy", "keyType": "GPGKeys",
                                                                       "keyPath": str(tmp_path / "key.asc")}]}))
        copied = skopeo("--policy", str(tmp_path / "policy.json"), "--registries.d", regd, "copy",
                         "--src-tls-verify=false", f"docker://{image}", f"dir:{tmp_path / f'out-{expect}'}")
        assert copied.returncode == expect, copied.stderr


def test_gpg_signing_on_push_goes_to_the_registry_signature_extension(service, front, rootfs_tar, signer, stranger,
                                                                      keypair, tmp_path, monkeypatch):
    """A registry that advertises the signature extension keeps the push's GPG signature, as with podman push
    --sign-by; the staging folder stays unused, and skopeo's signedBy policy reads the signature from the registry."""
    staging = tmp_path / "staging"
    policy_file = tmp_path / "signing.yaml"
    policy_file.write_text(f"docker:\n  {front.host}:\n    sign-by: release@example.com\n"
                           f"    lookaside-staging: file://{staging}\n")
    monkeypatch.setenv("GNUPGHOME", signer.home)
    _install(service, *load_signing_policy(str(policy_file), keypair[2]))
    image = f"{front.host}/team/app:v1"
    store = service.store
    store.tag(store.resolve(store.import_tar(io.BytesIO(rootfs_tar))).id, image)
    messages = list(service.push(image))
    digest = next(m["aux"]["Digest"] for m in messages if m.get("aux"))
    statuses = [m.get("status") for m in messages]
    assert f"Signature stored in http://{front.host}/extensions/v2/team/app/signatures/{digest}" in statuses
    assert not staging.exists() and [e["type"] for e in front.stored[("team/app", digest)]] == ["atomic"]
    for who, expect in ((signer, 0), (stranger, 1)):
        (tmp_path / "key.asc").write_bytes(who.public)
        (tmp_path / "policy.json").write_text(json.dumps({"default": [{"type": "signedBy", "keyType": "GPGKeys",
                                                                       "keyPath": str(tmp_path / "key.asc")}]}))
        copied = skopeo("--policy", str(tmp_path / "policy.json"), "copy", "--src-tls-verify=false",
                        f"docker://{image}", f"dir:{tmp_path / f'out-{expect}'}")
        assert copied.returncode == expect, copied.stderr


def test_a_signature_that_cannot_be_stored_fails_after_the_push_and_says_so(service, registry, rootfs_tar,
                                                                             signer, tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the staging folder should be")
    policy_file = tmp_path / "signing.json"
    policy_file.write_text(json.dumps({"default-docker": {"sign-by": signer.fingerprint,
                                                          "lookaside-staging": f"file://{blocked}/sigs"}}))
    monkeypatch.setenv("GNUPGHOME", signer.home)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    _install(service, *load_signing_policy(str(policy_file), empty))
    image = f"{registry.host}/team/app:v1"
    store = service.store
    store.tag(store.resolve(store.import_tar(io.BytesIO(rootfs_tar))).id, image)
    messages = []
    with pytest.raises(EngineError) as failed:
        for message in service.push(image):
            messages.append(message)
    digest = next(m["aux"]["Digest"] for m in messages if "aux" in m)  # the push itself went through
    assert str(failed.value) == (f"{image}: pushed as {digest}, but not signed: writing signatures: writing signature "
                                 f"{blocked}/sigs/team/app@sha256={digest[7:]}/signature-1: Not a directory")


def test_a_gpg_key_with_a_passphrase_needs_it(tmp_path, monkeypatch):
    home = tempfile.mkdtemp(prefix="/tmp/mgpg")
    try:
        subprocess.run(["gpg", "--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase", "right",
                        "--quick-gen-key", "Guarded <guarded@example.com>", "ed25519", "sign", "never"],
                       check=True, capture_output=True)
        monkeypatch.setenv("GNUPGHOME", home)
        policy_file = tmp_path / "signing.json"
        policy_file.write_text(json.dumps({"default-docker": {"sign-by": "guarded@example.com",
                                                              "lookaside-staging": "file:///srv/sigs"}}))
        wrong = tmp_path / "wrong"
        wrong.write_text("wrong\n")
        with pytest.raises(UsageError) as refused:
            load_signing_policy(str(policy_file), wrong)
        assert str(refused.value).startswith("--engine-signing-policy: gpg could not export guarded@example.com: ")
        assert "\n" not in str(refused.value)
        right = tmp_path / "right"
        right.write_text("right\n")
        _, installed = load_signing_policy(str(policy_file), right)
        assert dict(installed)[next(n for n, _ in installed if n.endswith(".pass"))] == b"right"
        missing = json.dumps({"default-docker": {"sign-by": "nobody@example.com", "lookaside-staging": "file:///s"}})
        policy_file.write_text(missing)
        with pytest.raises(UsageError, match="no GPG secret key 'nobody@example.com' in your keyring"):
            load_signing_policy(str(policy_file), right)
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
