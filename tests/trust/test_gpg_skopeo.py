"""GPG simple signing both ways with Debian's skopeo 1.9, and skopeo's view of machines' sigstore signatures."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from machines.runtime.errors import Forbidden
from tests.trust.conftest import UNSIGNED, drop_all_images, push_image, registries_d, run_machines, skopeo, write_policy

pytestmark = pytest.mark.usefixtures("interop_tools")


def test_skopeo_signs_and_machines_verifies(service, store, registry, rootfs_tar, signer, stranger, tmp_path):
    source, signed, unsigned = (f"{registry.host}/team/app:{tag}" for tag in ("src", "signed", "unsigned"))
    push_image(service, source, rootfs_tar, "one")
    push_image(service, unsigned, rootfs_tar, "two")
    lookaside = tmp_path / "lookaside"
    regd = registries_d(tmp_path / "registries.d", registry.host, lookaside)
    copied = skopeo("--insecure-policy", "--registries.d", regd, "copy", "--sign-by", signer.fingerprint,
                     "--src-tls-verify=false", "--dest-tls-verify=false", f"docker://{source}", f"docker://{signed}",
                     env=signer.env)
    assert copied.returncode == 0, copied.stderr
    (tmp_path / "release.asc").write_bytes(signer.public)
    (tmp_path / "stranger.asc").write_bytes(stranger.public)

    ok = run_machines("trust", "verify", signed, "--key", str(tmp_path / "release.asc"), "--lookaside", str(lookaside))
    assert ok.code == 0, ok.err
    assert ok.out.startswith(f"Verified OK: {registry.host}/team/app@sha256:")
    wrong = run_machines("trust", "verify", signed, "--key", str(tmp_path / "stranger.asc"),
                         "--lookaside", str(lookaside))
    assert (wrong.code, wrong.err.strip()) == (1, f"Error: {signed}: Invalid GPG signature")
    missing = run_machines("trust", "verify", unsigned, "--key", str(tmp_path / "release.asc"),
                           "--lookaside", str(lookaside))
    assert (missing.code, missing.err.strip()) == (1, f"Error: {unsigned}: {UNSIGNED}")

    # the runtime: registries.d in its data root, a signedBy policy
    drop_all_images(store)
    shutil.copytree(regd, os.path.join(os.path.dirname(service.trust.path), "registries.d"))
    write_policy(service, {"default": [{"type": "reject"}], "transports": {"docker": {f"{registry.host}/team": [
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(tmp_path / "release.asc")}]}}})
    list(service.pull(signed))
    service.admit(signed, store.resolve(signed))
    with pytest.raises(Forbidden) as refused:
        list(service.pull(unsigned))
    assert str(refused.value) == f"{unsigned}: Source image rejected: {UNSIGNED}"
    write_policy(service, {"default": [{"type": "signedBy", "keyType": "GPGKeys",
                                        "keyPath": str(tmp_path / "stranger.asc")}]})
    drop_all_images(store)
    with pytest.raises(Forbidden) as foreign:
        list(service.pull(signed))
    assert str(foreign.value) == f"{signed}: Source image rejected: Invalid GPG signature"


def test_machines_signs_and_skopeo_verifies(service, registry, rootfs_tar, signer, stranger, tmp_path):
    image = f"{registry.host}/team/app:v2"
    push_image(service, image, rootfs_tar, "two")
    lookaside = tmp_path / "lookaside"
    signed = run_machines("trust", "sign", image, "--sign-by", signer.fingerprint, "--lookaside", str(lookaside),
                          env={"GNUPGHOME": signer.home})
    assert signed.code == 0, signed.err
    assert "/team/app@sha256=" in signed.out and signed.out.strip().endswith("/signature-1")
    regd = registries_d(tmp_path / "registries.d", registry.host, lookaside)
    for who, expect in ((signer, 0), (stranger, 1)):
        (tmp_path / "key.asc").write_bytes(who.public)
        (tmp_path / "policy.json").write_text(json.dumps({"default": [{"type": "signedBy", "keyType": "GPGKeys",
                                                                       "keyPath": str(tmp_path / "key.asc")}]}))
        out = tmp_path / f"out-{expect}"
        copied = skopeo("--policy", str(tmp_path / "policy.json"), "--registries.d", regd, "copy",
                         "--src-tls-verify=false", f"docker://{image}", f"dir:{out}")
        assert copied.returncode == expect, copied.stderr
        if expect:
            assert "Source image rejected" in copied.stderr


def test_skopeo_reports_machines_sigstore_signatures_the_same_way_or_is_built_without_sigstore(
        service, registry, rootfs_tar, keypair, tmp_path):
    """Debian's skopeo 1.9 refuses sigstoreSigned with "Debian-local change: sigstore disabled" (README says so);
    for an unsigned image its message is the very one the runtime gives."""
    private, public, secret = keypair
    signed, unsigned = f"{registry.host}/app:signed", f"{registry.host}/app:unsigned"
    push_image(service, signed, rootfs_tar, "a")
    push_image(service, unsigned, rootfs_tar, "b")
    assert run_machines("trust", "sign", signed, "--key", str(private), "--passphrase-file", str(secret)).code == 0
    regd = tmp_path / "registries.d"
    regd.mkdir()
    (regd / "sigstore.yaml").write_text(f"docker:\n  {registry.host}:\n    use-sigstore-attachments: true\n")
    (tmp_path / "policy.json").write_text(json.dumps({"default": [
        {"type": "sigstoreSigned", "keyPath": str(public), "signedIdentity": {"type": "matchRepository"}}]}))
    results = {}
    for image in (signed, unsigned):
        copied = skopeo("--policy", str(tmp_path / "policy.json"), "--registries.d", str(regd), "copy",
                         "--src-tls-verify=false", f"docker://{image}", f"dir:{tmp_path / image.rsplit(':', 1)[1]}")
        results[image] = (copied.returncode, copied.stderr)
    assert results[unsigned][0] == 1 and f"Source image rejected: {UNSIGNED}" in results[unsigned][1]
    assert results[signed][0] == 0 or "Source image rejected: Debian-local change: sigstore disabled" in results[signed][1]
