"""End to end: ``machines create/set --engine-signing-policy`` signs ``docker push`` (the real docker CLI) through a
machine; the signature verifies with ``machines trust verify`` and under a ``sigstoreSigned`` pull policy; out of
scope pushes are not signed; the key is nowhere but in its 0600 file on the host; ``set ... ""`` removes policies."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from machines.drivers.nshost import Bridge
from machines.trust import keys
from tests.support.cli import DOCKER, machines, with_env
from tests.support.hosts import unique_name
from tests.support.registry import Registry
from tests.trust.conftest import PASSPHRASE, run_machines
from tests.trust.test_machine import _create_reaching, _push_alpine_fixture


def _docker(machines_store: Path, name: str, command: str) -> str:
    result = with_env(machines_store, name, f"{DOCKER} {command}")
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def _verify(image: str, public: Path) -> tuple[int, str]:
    result = run_machines("trust", "verify", image, "--key", str(public))
    return result.code, (result.out + result.err).strip()


def _secret_lines(private: Path) -> list[str]:
    """The base64 lines of the decrypted key as it is installed: none may appear anywhere but the key file."""
    key = keys.decrypt_private_key(private.read_bytes(), PASSPHRASE.encode())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return [line for line in pem.splitlines() if not line.startswith("-----")]


def test_docker_push_signs_in_scope_and_set_removes_the_policies(machines_store, registry: Registry,
                                                                 keypair, signer, test_bridge: Bridge,
                                                                 tmp_path, monkeypatch):
    private, public, secret = keypair
    base = _push_alpine_fixture(registry, tmp_path, "base/alpine:1")
    signed, other, gpg_signed = (f"{registry.host}/team/app:v1", f"{registry.host}/elsewhere/app:v1",
                                 f"{registry.host}/gpg/app:v1")
    folder = tmp_path / "policies"
    folder.mkdir()
    signing_policy = folder / "signing.yaml"
    signing_policy.write_text(f"docker:\n  {registry.host}/team:\n    sign-by-sigstore-private-key: ../cosign.key\n"
                              f"  {registry.host}/gpg:\n    sign-by: release@example.com\n"
                              "    lookaside-staging: file:///var/lib/signatures\n")
    monkeypatch.setenv("GNUPGHOME", signer.home)  # the workstation's keyring holds the GPG key

    name = unique_name("sp")
    _create_reaching(machines_store, registry, test_bridge, name, "--engine-signing-policy", str(signing_policy),
                     "--engine-signing-passphrase-file", str(secret))
    _docker(machines_store, name, f"pull -q {base}")
    for image in (signed, other, gpg_signed):
        _docker(machines_store, name, f"tag {base} {image}")
    pushed = _docker(machines_store, name, f"push {signed}")
    digest = re.search(r"v1: digest: (sha256:[0-9a-f]{64})", pushed).group(1)
    assert f"Signature stored as tag {digest.replace(':', '-')}.sig" in pushed
    assert _verify(signed, public) == (0, f"Verified OK: {registry.host}/team/app@{digest}")
    out_of_scope = _docker(machines_store, name, f"push {other}")
    assert "Signing" not in out_of_scope
    assert _verify(other, public) == (1, f"Error: {other}: A signature was required, but no signature exists")

    # GPG: the host's gpg signs into lookaside-staging, where machines trust verify reads it.
    gpg_pushed = _docker(machines_store, name, f"push {gpg_signed}")
    assert "Signing manifest using simple signing" in gpg_pushed
    assert f"Signature stored as /var/lib/signatures/gpg/app@sha256={digest[7:]}/signature-1" in gpg_pushed
    machines(machines_store, "scp", "-r", f"{name}:/var/lib/signatures", str(tmp_path / "lookaside"))
    (tmp_path / "release.asc").write_bytes(signer.public)
    verified = run_machines("trust", "verify", gpg_signed, "--key", str(tmp_path / "release.asc"),
                            "--lookaside", str(tmp_path / "lookaside"))
    assert verified.code == 0, verified.err

    # The keys: 0600 root's in a 0700 folder on the host, and nowhere else (record, inspect, docker info, logs).
    root = _docker(machines_store, name, "info --format '{{.DockerRootDir}}'").strip()
    listing = machines(machines_store, "ssh", name, "--", f"stat -c '%a %U %n' {root}/signing {root}/signing/*").stdout
    folder_line, *key_lines = listing.strip().splitlines()
    assert folder_line == f"700 root {root}/signing"
    assert sorted(line.rsplit("/", 1)[1] for line in key_lines if line.startswith("600 root ")) == sorted(
        [f"{signer.fingerprint}.asc", f"{signer.fingerprint}.pass",
         next(line.rsplit("/", 1)[1] for line in key_lines if line.endswith(".key"))])
    assert len(key_lines) == 3
    seen = [machines(machines_store, "inspect", name).stdout, _docker(machines_store, name, "info"),
            machines(machines_store, "logs", name, check=False).stdout,
            machines(machines_store, "ssh", name, "--", "cat", f"{root}/signing.json").stdout]
    host_files = Path(machines_store) / "machines" / name / "host"  # the local driver keeps the host's filesystem here
    seen += [path.read_text(errors="replace") for path in Path(machines_store).rglob("*")
             if path.is_file() and host_files not in path.parents]
    exported = subprocess.run(["gpg", "--batch", "--armor", "--export-secret-keys", signer.fingerprint],
                              env=signer.env, check=True, capture_output=True, text=True).stdout
    gpg_lines = [line for line in exported.splitlines() if len(line) == 64]  # full lines of the armored key
    assert gpg_lines
    for line in [*_secret_lines(private), *gpg_lines, PASSPHRASE]:
        assert not any(line in text for text in seen)
    assert "sign-by-sigstore-private-key" in machines(machines_store, "inspect", name).stdout  # the policy is shown, keyless

    # A key gone from the host stops the push before anything is sent; set installs it again.
    machines(machines_store, "ssh", name, "--", f"rm {root}/signing/*.key")  # the sigstore key only
    again = f"{registry.host}/team/app:v3"
    _docker(machines_store, name, f"tag {base} {again}")
    failed = with_env(machines_store, name, f"{DOCKER} push {again}")
    assert failed.returncode == 1
    assert re.fullmatch(rf"Error response from daemon: {registry.host}/team/app: nothing was pushed: creating signature: signing key "
                        r"[0-9a-f]{16}\.key: No such file or directory; install it again with machines set "
                        r"--engine-signing-policy", failed.stderr.decode().strip()), failed.stderr.decode()
    planned = machines(machines_store, "set", "--dry-run", "--engine-signing-policy", str(signing_policy),
                       "--engine-signing-passphrase-file", str(secret), name)
    assert planned.stdout.strip() == "signing keys: installed again"
    machines(machines_store, "set", "--engine-signing-policy", str(signing_policy), "--engine-signing-passphrase-file",
             str(secret), name)
    assert "Signature stored as tag" in _docker(machines_store, name, f"push {again}")
    assert _verify(again, public)[0] == 0

    # A pull policy on the same machine accepts the signed push and refuses the unsigned one ...
    trust_policy = folder / "policy.json"
    trust_policy.write_text(json.dumps({
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {"docker": {registry.host: [{"type": "sigstoreSigned", "keyPath": "../cosign.pub"}]}}}))
    machines(machines_store, "set", "--engine-trust-policy", str(trust_policy), name)
    _docker(machines_store, name, f"rmi {signed} {other} {base} {again}")
    _docker(machines_store, name, f"pull {signed}")
    refused = with_env(machines_store, name, f"{DOCKER} pull {other}")
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == (f"Error response from daemon: {other}: Source image rejected: "
                                               "A signature was required, but no signature exists")

    # ... until set removes it; removing the signing policy stops the signing and deletes the key.
    planned = machines(machines_store, "set", "--dry-run", "--engine-trust-policy", "", "--engine-signing-policy", "", name)
    assert {"trust policy: removed", "signing policy: removed"} <= set(planned.stdout.splitlines())
    machines(machines_store, "set", "--engine-trust-policy", "", "--engine-signing-policy", "", name)
    _docker(machines_store, name, f"pull {other}")
    later = f"{registry.host}/team/later:v1"  # in the old scope; another repository holds no signature yet
    _docker(machines_store, name, f"tag {other} {later}")
    assert "Signing" not in _docker(machines_store, name, f"push {later}")
    assert _verify(later, public)[0] == 1
    gone = machines(machines_store, "ssh", name, "--", f"ls {root}/signing {root}/signing.json", check=False)
    assert gone.returncode != 0 and "No such file" in gone.stderr + gone.stdout
    record = json.loads(machines(machines_store, "inspect", name).stdout)
    assert "trust_policy" not in record["host_options"] and "signing_policy" not in record["host_options"]


def test_bad_passphrase_or_key_is_one_line_and_changes_nothing(machines_store, keypair, tmp_path):
    private, public, _ = keypair
    policy = tmp_path / "signing.json"
    policy.write_text(json.dumps({"default-docker": {"sign-by-sigstore-private-key": str(private)}}))
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not it\n")
    result = run_machines("--storage-path", str(machines_store), "create", "--engine-signing-policy", str(policy),
                          "--engine-signing-passphrase-file", str(wrong), "sp-bad")
    assert (result.code, result.err.strip()) == (2, f"Error: --engine-signing-policy: {private}: decrypt: encrypted: "
                                                    "decryption failed (wrong passphrase?)")
    policy.write_text(json.dumps({"default-docker": {"sign-by-sigstore-private-key": str(public)}}))
    result = run_machines("--storage-path", str(machines_store), "create", "--engine-signing-policy", str(policy),
                          "--engine-signing-passphrase-file", str(wrong), "sp-bad")
    assert (result.code, result.err.strip()) == (2, f"Error: --engine-signing-policy: {public}: not an encrypted "
                                                    "sigstore private key (expected a ENCRYPTED SIGSTORE PRIVATE KEY "
                                                    "PEM block)")
    policy.write_text(json.dumps({"docker": {"r.example/x": {"sign-by": "nobody@example.com",
                                                             "lookaside-staging": "file:///srv/signatures"}}}))
    empty_keyring = tempfile.mkdtemp(prefix="/tmp/mgpg")
    try:
        result = run_machines("--storage-path", str(machines_store), "create", "--engine-signing-policy", str(policy),
                              "--engine-signing-passphrase-file", str(wrong), "sp-bad",
                              env={"GNUPGHOME": empty_keyring})
    finally:
        subprocess.run(["gpgconf", "--homedir", empty_keyring, "--kill", "all"], capture_output=True)
        shutil.rmtree(empty_keyring, ignore_errors=True)
    assert (result.code, result.err.strip()) == (2, "Error: --engine-signing-policy: no GPG secret key "
                                                    "'nobody@example.com' in your keyring")
    assert not (Path(machines_store) / "machines" / "sp-bad").exists()
