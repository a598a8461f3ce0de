"""``machines export`` / ``machines import``: a machine entry moves to another store (another workstation) with its
keys and certificates, encrypted with a passphrase; a wrong passphrase, a changed byte or a hostile archive is
refused and writes nothing."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

from machines.share import MAGIC, SALT_SIZE, _fernet
from tests.reach.conftest import create_generic
from tests.support.cli import DOCKER, MACHINES, machines
from tests.support.hosts import HostFactory


def _env(store: Path, name: str) -> str:
    return f'eval "$({MACHINES} --storage-path {store} env --shell bash {name})"'


def test_export_import_round_trip(test_host: HostFactory, tmp_path: Path) -> None:
    host = test_host()
    first, second = tmp_path / "first", tmp_path / "second"
    create_generic(first, host)
    try:
        secret = tmp_path / "pass"
        secret.write_text("correct horse battery staple\n")
        exported = tmp_path / "web.machine"
        machines(first, "export", "web", "-o", str(exported), "--passphrase-file", str(secret))
        data = exported.read_bytes()
        assert stat.S_IMODE(exported.stat().st_mode) == 0o600 and data.startswith(MAGIC)
        assert b"PRIVATE KEY" not in data and b"ssh-ed25519" not in data

        wrong = tmp_path / "wrong"
        wrong.write_text("guess\n")
        refused = machines(second, "import", str(exported), "--passphrase-file", str(wrong), check=False)
        assert refused.returncode == 2 and "wrong passphrase, or the file was changed" in refused.stderr
        tampered = tmp_path / "tampered"
        tampered.write_bytes(data[:-10] + bytes(10))
        refused = machines(second, "import", str(tampered), "--passphrase-file", str(secret), check=False)
        assert refused.returncode == 2 and "wrong passphrase, or the file was changed" in refused.stderr
        assert machines(second, "ls", "-q").stdout == ""

        assert machines(second, "import", str(exported), "--passphrase-file", str(secret)).stdout == "web\n"
        assert machines(second, "ssh", "web", "hostname").stdout == machines(first, "ssh", "web", "hostname").stdout
        version = subprocess.run(["bash", "-c", f"{_env(second, 'web')} && {DOCKER} version --format "
                                  "'{{.Server.Os}}'"], capture_output=True, text=True, timeout=120,
                                 env={k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")})
        assert version.stdout == "linux\n", version.stderr
        key = second / "machines" / "web" / "generic_ssh_key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        again = machines(second, "import", str(exported), "--passphrase-file", str(secret), check=False)
        assert again.returncode == 1 and "machine 'web' already exists" in again.stderr
        machines(second, "import", str(exported), "--passphrase-file", str(secret), "--name", "web2")
        assert machines(second, "ssh", "web2", "hostname").returncode == 0
    finally:
        machines(second, "rm", "-f", "-y", "web", "web2", check=False)
        machines(first, "rm", "-y", "web")


def _sealed(members: dict[str, bytes | None], passphrase: str) -> bytes:
    """An export file holding ``members`` (None: a symlink to /etc/passwd) encrypted as machines does."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    salt = os.urandom(SALT_SIZE)
    return MAGIC + salt + _fernet(passphrase, salt).encrypt(archive.getvalue())


def test_hostile_exports_are_refused_and_write_nothing(tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("p")
    record = b'{"name": "x", "driver_name": "generic", "schema_version": 1}'
    store = tmp_path / "store"
    for members, message in (
        ({"config.json": record, "../escape": b"x"}, "unexpected member '../escape'"),
        ({"config.json": record, "/etc/cron.d/x": b"x"}, "unexpected member '/etc/cron.d/x'"),
        ({"config.json": record, "link": None}, "unexpected member 'link'"),
        ({"id_ed25519": b"x"}, "it holds no machine record"),
        ({"config.json": b'{"name": "../../x", "driver_name": "generic"}'}, "invalid"),
        ({"config.json": b'{"name": "x", "driver_name": "local"}'}, "a local machine cannot move"),
    ):
        hostile = tmp_path / "hostile"
        hostile.write_bytes(_sealed(members, "p"))
        result = machines(store, "import", str(hostile), "--passphrase-file", str(secret), check=False)
        assert result.returncode == 2 and message in result.stderr.lower().replace("'", "'"), (members, result.stderr)
        assert not (tmp_path / "escape").exists()
        assert not (store / "machines").exists() or list((store / "machines").iterdir()) == []
    plain = tmp_path / "plain"
    plain.write_bytes(b"hello")
    result = machines(store, "import", str(plain), "--passphrase-file", str(secret), check=False)
    assert result.returncode == 2 and "not a machines export file" in result.stderr
