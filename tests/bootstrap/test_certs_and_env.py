"""Certificates and ``env`` output without a host: what a user relies on when pointing clients at a machine."""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import ipaddress
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
from cryptography import x509

from machines import runtime, shellenv
from machines.bootstrap import bundle as bundles
from machines.bootstrap import certs
from machines.errors import UsageError

pytestmark = pytest.mark.fast  # the fast tier: no root, seconds (pytest -m fast)


def test_store_certificates_are_made_once_private_and_valid_for_three_years(tmp_path: Path) -> None:
    store = certs.ensure_store_certs(tmp_path)
    first = store.ca_cert.read_bytes()
    assert certs.ensure_store_certs(tmp_path).ca_cert.read_bytes() == first  # made once
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    for path in (store.ca_cert, store.ca_key, store.client_cert, store.client_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ca = certs.load_cert(store.ca_cert)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert now - datetime.timedelta(minutes=6) < ca.not_valid_before_utc < now - datetime.timedelta(minutes=4)
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 1080
    client = certs.load_cert(store.client_cert)
    client.verify_directly_issued_by(ca)
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_server_certificate_names_every_address_and_follows_the_ip(tmp_path: Path) -> None:
    store = certs.ensure_store_certs(tmp_path / "store")
    machine_dir = tmp_path / "machine"
    machine_dir.mkdir()
    sans = certs.server_sans(["10.0.0.5", "fd00::5"], "web", ["web.example.com", "192.0.2.7"])
    certs.issue_server_cert(store, machine_dir, "web", sans)
    extension = certs.load_cert(machine_dir / "server.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert set(extension.value.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("10.0.0.5", "fd00::5", "127.0.0.1", "192.0.2.7")
    }
    assert set(extension.value.get_values_for_type(x509.DNSName)) == {"web", "localhost", "web.example.com"}
    assert stat.S_IMODE((machine_dir / "server-key.pem").stat().st_mode) == 0o600
    assert certs.server_cert_valid(machine_dir, store, ["10.0.0.5"])
    assert not certs.server_cert_valid(machine_dir, store, ["10.0.0.6"])  # the IP changed: re-issue
    rotated = certs.ensure_store_certs(tmp_path / "store", rotate=True)
    assert not certs.server_cert_valid(machine_dir, rotated, ["10.0.0.5"])  # signed by the old CA


def test_parallel_creates_share_one_ca(tmp_path: Path) -> None:
    """``machines create a b c`` provisions in threads: they must all end up signed by the same CA."""

    def provision_certs(index: int) -> Path:
        machine_dir = tmp_path / "machines" / f"m{index}"
        machine_dir.mkdir(parents=True)
        store = certs.ensure_store_certs(tmp_path)
        certs.issue_server_cert(store, machine_dir, f"m{index}", [f"10.0.0.{index + 1}"])
        certs.copy_client_certs(store, machine_dir)
        return machine_dir

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        machine_dirs = list(pool.map(provision_certs, range(8)))
    store = certs.StoreCerts(tmp_path / "certs")
    for machine_dir in machine_dirs:
        assert certs.server_cert_valid(machine_dir, store, [])
        assert (machine_dir / "ca.pem").read_bytes() == store.ca_cert.read_bytes()


def test_env_values_survive_eval_in_bash(tmp_path: Path) -> None:
    awkward = str(tmp_path / "it's a \"dir\" with $HOME")
    text = shellenv.render({"DOCKER_CERT_PATH": awkward, "DOCKER_HOST": "tcp://10.0.0.5:2376", "GONE": None}, "bash", "m")
    result = subprocess.run(
        ["bash", "-c", 'eval "$1"; printf "%s|%s|%s" "$DOCKER_CERT_PATH" "$DOCKER_HOST" "${GONE-unset}"', "-", text],
        capture_output=True,
        text=True,
        env={**os.environ, "GONE": "was set"},
    )
    assert result.stdout == f"{awkward}|tcp://10.0.0.5:2376|unset"


@pytest.mark.parametrize(
    ("shell", "set_line", "unset_line"),
    [
        ("fish", "set -gx DOCKER_HOST 'tcp://h:2376';", "set -e DOCKER_TLS_VERIFY;"),
        ("powershell", "$Env:DOCKER_HOST = 'tcp://h:2376'", "Remove-Item Env:\\DOCKER_TLS_VERIFY"),
        ("cmd", "SET DOCKER_HOST=tcp://h:2376", "SET DOCKER_TLS_VERIFY="),
        ("zsh", "export DOCKER_HOST=tcp://h:2376", "unset DOCKER_TLS_VERIFY"),
    ],
)
def test_env_speaks_each_shell(shell: str, set_line: str, unset_line: str) -> None:
    lines = shellenv.render({"DOCKER_HOST": "tcp://h:2376", "DOCKER_TLS_VERIFY": None}, shell, "machines env m").splitlines()
    assert lines[0] == set_line
    assert lines[1].startswith(unset_line)


def test_unknown_shell_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown shell 'tcshx'"):
        shellenv.render({}, "tcshx", "m")


def test_no_proxy_appends_the_ip_once() -> None:
    once = shellenv.no_proxy_value("10.0.0.5", {"NO_PROXY": "localhost,.corp"})
    assert once == "localhost,.corp,10.0.0.5"
    assert shellenv.no_proxy_value("10.0.0.5", {"NO_PROXY": once}) == once
    assert shellenv.no_proxy_value("10.0.0.5", {}) == "10.0.0.5"


def test_runtime_bundle_is_reproducible_and_runs(tmp_path: Path) -> None:
    first = bundles.build(tmp_path / "a")
    second = bundles.build(tmp_path / "b")
    assert first.sha256 == second.sha256 and first.path.read_bytes() == second.path.read_bytes()
    result = subprocess.run(["/usr/bin/python3", str(first.path), "version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert first.version in result.stdout


def test_runtime_bundle_is_reused_until_its_sources_change(tmp_path: Path) -> None:
    """A build is looked up by its sources' metadata: the same sources give the same file, an edited module (even
    one of the same size) or a damaged cached file gives a fresh, correct build."""
    source = tmp_path / "runtime"
    shutil.copytree(Path(runtime.__file__).parent, source, ignore=shutil.ignore_patterns("__pycache__"))
    first = bundles.build(tmp_path / "cache", source)
    assert bundles.build(tmp_path / "cache", source) == first

    module, edited_version = source / "__init__.py", first.version.replace(".", "-")  # the same size
    module.write_text(module.read_text().replace(f'VERSION = "{first.version}"', f'VERSION = "{edited_version}"'))
    edited = bundles.build(tmp_path / "cache", source)
    assert edited.sha256 != first.sha256
    with zipfile.ZipFile(edited.path) as archive:
        assert f'VERSION = "{edited_version}"' in archive.read("machines/runtime/__init__.py").decode()
    assert sorted(path.name for path in (tmp_path / "cache").glob("runtime-*.pyz")) == [edited.path.name]

    edited.path.write_bytes(edited.path.read_bytes()[:-10])  # a damaged cache is never handed to a host
    rebuilt = bundles.build(tmp_path / "cache", source)
    assert hashlib.sha256(rebuilt.path.read_bytes()).hexdigest() == rebuilt.sha256
    with zipfile.ZipFile(rebuilt.path) as archive:
        assert f'VERSION = "{edited_version}"' in archive.read("machines/runtime/__init__.py").decode()


def test_runtime_bundle_bytecode_never_outlives_its_source(tmp_path: Path) -> None:
    """The zipapp carries bytecode beside each module; a module whose source no longer matches it (an edited
    archive) runs from its source, never from stale bytecode."""
    built = bundles.build(tmp_path / "cache")
    edited = tmp_path / "edited.pyz"
    with zipfile.ZipFile(built.path) as original, zipfile.ZipFile(edited, "w") as copy:
        assert "machines/runtime/__init__.pyc" in original.namelist()
        for info in original.infolist():
            data = original.read(info)
            if info.filename == "machines/runtime/__init__.py":
                data = data.replace(f'VERSION = "{built.version}"'.encode(), b'VERSION = "9.9.9-edited"')
            copy.writestr(info, data)
    result = subprocess.run(["/usr/bin/python3", str(edited), "version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "9.9.9-edited" in result.stdout
