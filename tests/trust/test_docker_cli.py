"""The real docker CLI against the runtime daemon with a sigstoreSigned policy: pull, run and build FROM."""

from __future__ import annotations

import io
import json
import tarfile

from tests.support import busybox
from tests.trust.conftest import run_machines

REFUSED = "Source image rejected: A signature was required, but no signature exists"


def _context(dockerfile: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile.encode()))
    return buffer.getvalue()


def test_docker_pull_run_and_build_honour_a_sigstore_policy(daemon, registry, keypair):
    private, public, secret = keypair
    signed, unsigned, old = (f"{registry.host}/signed/app:{tag}" for tag in ("v1", "v2", "old"))
    for number, name in enumerate((signed, unsigned, old)):
        daemon.out("import", "--change", f"LABEL n={number}", "-", name, input=busybox.rootfs())
        daemon.out("push", name)
    assert run_machines("trust", "sign", signed, "--key", str(private), "--passphrase-file", str(secret)).code == 0
    daemon.out("rmi", signed, unsigned, old)
    daemon.out("pull", old)  # before the policy: pulled without verification
    local = "local/busybox:1"
    daemon.out("import", "-", local, input=busybox.rootfs())
    (daemon.root / "data" / "policy.json").write_text(json.dumps({
        "default": [{"type": "reject"}],
        "transports": {"docker": {f"{registry.host}/signed": [{"type": "sigstoreSigned", "keyPath": str(public)}]},
                       "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}}}))

    refused = daemon.docker("pull", unsigned)
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == f"Error response from daemon: {unsigned}: {REFUSED}"
    run_refused = daemon.docker("run", "--rm", unsigned, "true")
    assert run_refused.returncode == 125
    assert f"{unsigned}: {REFUSED}" in run_refused.stderr.decode()
    stale = daemon.docker("run", "--rm", old, "true")
    assert stale.returncode == 125
    assert (f"Error response from daemon: {old}: Source image rejected: it was not verified under the current "
            "trust policy; pull it again") in stale.stderr.decode()

    assert daemon.out("run", "--rm", signed, "echo", "signed and running").strip() == "signed and running"
    assert daemon.out("run", "--rm", local, "echo", "local").strip() == "local"  # the docker-daemon entry

    build = daemon.docker("build", "-q", "-", input=_context(f"FROM {unsigned}\nRUN true\n"), timeout=120)
    assert build.returncode == 1
    assert f"{unsigned}: {REFUSED}" in build.stderr.decode()
    stale_build = daemon.docker("build", "-q", "-", input=_context(f"FROM {old}\nLABEL x=1\n"), timeout=120)
    assert stale_build.returncode == 1 and "not verified under the current trust policy" in stale_build.stderr.decode()
    built = daemon.docker("build", "-q", "-t", "from/signed:1", "-", input=_context(f"FROM {signed}\nLABEL x=1\n"),
                          timeout=120)
    assert built.returncode == 0, built.stderr.decode()
    assert daemon.out("run", "--rm", "from/signed:1", "echo", "built").strip() == "built"  # built here: local
