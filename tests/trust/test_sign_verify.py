"""``machines trust keygen/sign/verify`` against Debian's docker-registry on loopback."""

from __future__ import annotations

import base64
import json
import stat

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from machines.runtime.images import trust
from machines.trust import keys
from tests.trust.conftest import PASSPHRASE, push_image, run_machines


def test_keygen_writes_an_encrypted_sigstore_key_and_a_public_key(keypair):
    private, public, _ = keypair
    text = private.read_text()
    assert text.startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    body = json.loads(base64.b64decode("".join(text.splitlines()[1:-1])))
    assert body["kdf"]["name"] == "scrypt" and body["kdf"]["params"] == {"N": 32768, "r": 8, "p": 1}
    assert body["cipher"]["name"] == "nacl/secretbox" and len(base64.b64decode(body["cipher"]["nonce"])) == 24
    key = keys.decrypt_private_key(private.read_bytes(), PASSPHRASE.encode())
    loaded = serialization.load_pem_public_key(public.read_bytes())
    assert loaded.public_numbers() == key.public_key().public_numbers()


def test_keygen_refuses_to_overwrite_and_wrong_passphrases_fail(keypair, tmp_path):
    private, _, secret = keypair
    again = run_machines("trust", "keygen", str(tmp_path / "cosign"), "--passphrase-file", str(secret))
    assert again.code != 0 and "already exists" in again.err
    bad = tmp_path / "bad.txt"
    bad.write_text("nope\n")
    result = run_machines("trust", "sign", "127.0.0.1:1/x:1", "--key", str(private), "--passphrase-file", str(bad))
    assert result.code == 1
    assert result.err.strip().endswith("decryption failed (wrong passphrase?)")
    assert "Traceback" not in result.err


def test_sign_then_verify_in_a_loopback_registry(service, registry, rootfs_tar, keypair, tmp_path):
    private, public, secret = keypair
    image = f"{registry.host}/team/app:v1"
    digest = push_image(service, image, rootfs_tar)
    unsigned = run_machines("trust", "verify", image, "--key", str(public))
    assert unsigned.code == 1
    assert unsigned.err.strip() == f"Error: {image}: A signature was required, but no signature exists"

    signed = run_machines("trust", "sign", image, "--key", str(private), "--passphrase-file", str(secret))
    assert signed.code == 0, signed.err
    assert trust.signature_tag(digest) in signed.out

    ok = run_machines("trust", "verify", image, "--key", str(public))
    assert ok.code == 0, ok.err
    assert ok.out.strip() == f"Verified OK: {registry.host}/team/app@{digest}"

    other = tmp_path / "other"
    assert run_machines("trust", "keygen", str(other), "--passphrase-file", str(secret)).code == 0
    wrong = run_machines("trust", "verify", image, "--key", f"{other}.pub")
    assert wrong.code == 1
    assert "cryptographic signature verification failed" in wrong.err


def test_the_attachment_is_cosigns_format_and_verifies_with_cryptography(service, registry, rootfs_tar, keypair):
    private, public, secret = keypair
    image = f"{registry.host}/app:v2"
    digest = push_image(service, image, rootfs_tar)
    assert run_machines("trust", "sign", image, "--key", str(private), "--passphrase-file", str(secret)).code == 0
    assert run_machines("trust", "sign", image, "--key", str(private), "--passphrase-file", str(secret)).code == 0
    from machines.runtime.images import registry as registry_mod
    from machines.runtime.images.reference import parse

    session = registry_mod.Session(parse(image), {}, registry_mod.RegistryOptions())
    fetch = trust.session_fetch(session)
    status, body = fetch(f"/v2/app/manifests/{trust.signature_tag(digest)}", "application/vnd.oci.image.manifest.v1+json")
    manifest = json.loads(body)
    assert status == 200 and manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert len(manifest["layers"]) == 2  # ECDSA signatures differ each time; both are kept, as cosign appends
    public_key = serialization.load_pem_public_key(public.read_bytes())
    for layer in manifest["layers"]:
        assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
        status, payload = fetch(f"/v2/app/blobs/{layer['digest']}", "*/*")
        assert json.loads(payload) == {
            "critical": {"identity": {"docker-reference": image}, "image": {"docker-manifest-digest": digest},
                         "type": "cosign container image signature"}, "optional": None}
        signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
        public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))  # raises if invalid
