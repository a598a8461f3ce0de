"""Signing and verifying against an HTTPS registry with Bearer tokens, with the credentials and CA the docker CLI
keeps (``$DOCKER_CONFIG/config.json`` and ``$DOCKER_CONFIG/certs.d/HOST/ca.crt``)."""

from __future__ import annotations

import base64
import io
import json
import shutil

from machines.runtime.images.service import ImageService
from machines.runtime.images.store import ImageStore
from tests.support.registry import USERS
from tests.trust.conftest import run_machines


def test_sign_and_verify_over_https_with_docker_login_credentials(tmp_path, tls_token_registry, rootfs_tar,
                                                                   keypair):
    reg, _tokens, certs = tls_token_registry
    private, public, secret = keypair
    user, password = next(iter(USERS.items()))
    service = ImageService(ImageStore(str(tmp_path / "store" / "image")), certs_dirs=[certs])
    image = f"{reg.host}/secure/app:1"
    service.store.import_tar(io.BytesIO(rootfs_tar), image)
    list(service.push(image, auth={"username": user, "password": password, "serveraddress": reg.host}))

    docker_config = tmp_path / "docker-config"
    shutil.copytree(certs, docker_config / "certs.d")
    anonymous = run_machines("trust", "verify", image, "--key", str(public), env={"DOCKER_CONFIG": str(docker_config)})
    assert anonymous.code == 1 and "unauthorized" in anonymous.err.lower() and "Traceback" not in anonymous.err

    login = base64.b64encode(f"{user}:{password}".encode()).decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": login}}}))
    env = {"DOCKER_CONFIG": str(docker_config)}
    signed = run_machines("trust", "sign", image, "--key", str(private), "--passphrase-file", str(secret), env=env)
    assert signed.code == 0, signed.err
    verified = run_machines("trust", "verify", image, "--key", str(public), env=env)
    assert verified.code == 0, verified.err
    assert verified.out.startswith(f"Verified OK: {reg.host}/secure/app@sha256:")

    # Without its CA folder a loopback registry is spoken to in plain HTTP (Docker's default for 127.0.0.0/8), which
    # this TLS-only registry refuses: one line, never a silent success.
    shutil.rmtree(docker_config / "certs.d")
    plain = run_machines("trust", "verify", image, "--key", str(public), env=env)
    assert (plain.code, plain.err) == (1, "Error: /v2/secure/app/manifests/1: HTTP 400\n")
