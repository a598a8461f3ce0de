"""``machines scan`` finds the Go toolchain and modules built into Go executables of every build info format: real
Go 1.15 binaries (the pointer-based header of Go < 1.18) for four ELF layouts, a Go binary built here with Debian's
Go, and damaged files that must yield nothing rather than an error."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from machines.runtime.images.scan import gobinary
from machines.runtime.images.scan.inventory import scan_layers
from tests.scan import fixtures
from tests.trust.conftest import run_machines

DATA = Path(__file__).parent / "data" / "go"
OSV = Path(__file__).parent / "osv"
HELLO = {("stdlib", "go1.15.15"), ("example.com/lib", "v1.2.3")}


def _go_packages(binary: bytes) -> set[tuple[str, str]]:
    layer = fixtures.layer({"usr/local/bin/hello": binary}, {"usr/local/bin/hello": 0o755})
    return {(p.name, p.version) for p in scan_layers([io.BytesIO(layer)]).packages if p.kind == "go"}


def _go_version_m(binary: bytes, folder: Path) -> str:
    """What Go's own debug/buildinfo reads from ``binary`` (``go version -m``)."""
    path = folder / "binary"
    path.write_bytes(binary)
    path.chmod(0o755)
    return subprocess.run(["go", "version", "-m", str(path)], capture_output=True, text=True, timeout=120,
                          check=True).stdout


@pytest.mark.parametrize("arch", ["amd64", "386", "mips", "ppc64"])
def test_real_go_1_15_binaries(arch, tmp_path):
    binary = gzip.decompress((DATA / f"hello-go1.15-{arch}.gz").read_bytes())
    header = binary.find(gobinary.GO_MAGIC)
    assert binary[header + 15] & 2 == 0  # the pointer-based header of Go < 1.18
    assert "go1.15.15" in _go_version_m(binary, tmp_path) and "\tdep\texample.com/lib\tv1.2.3" in \
        _go_version_m(binary, tmp_path)
    assert _go_packages(binary) == HELLO


@pytest.mark.parametrize("wide,big", [(True, False), (False, False), (False, True), (True, True)])
def test_format_before_1_18_in_every_elf_layout(wide, big, tmp_path):
    binary = fixtures.go_binary_before_1_18("go1.16.2", fixtures.GO_MODINFO, wide=wide, big=big)
    assert _go_version_m(binary, tmp_path).startswith(f"{tmp_path / 'binary'}: go1.16.2\n")
    assert _go_packages(binary) == {("stdlib", "go1.16.2"), ("golang.org/x/text", "v0.3.7"),
                                    ("golang.org/x/net", "v0.0.0-20220722155237-a158d28d115b"),
                                    ("github.com/new/name", "v1.2.0")}


def test_scan_reports_the_old_toolchains_advisory(tmp_path):
    archive = fixtures.save_archive(tmp_path / "hello.tar", [fixtures.layer({
        "usr/local/bin/hello": gzip.decompress((DATA / "hello-go1.15-amd64.gz").read_bytes())},
        {"usr/local/bin/hello": 0o755})])
    db = tmp_path / "osv"
    db.mkdir()
    shutil.copy(OSV / "GO-2022-0969.json", db)
    result = run_machines("scan", str(archive), "--db", str(db), "--format", "json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["packages"] == 2
    assert [(v["id"], v["package"], v["installed"], v["path"]) for v in report["vulnerabilities"]] == [
        ("GO-2022-0969", "stdlib", "go1.15.15", "/usr/local/bin/hello")]


def test_go_binary_built_here(tmp_path):
    source = tmp_path / "hello"
    (source / "vendor/example.com/lib").mkdir(parents=True)
    (source / "go.mod").write_text("module example.com/hello\n\ngo 1.17\n\nrequire example.com/lib v1.2.3\n")
    (source / "main.go").write_text('package main\n\nimport "example.com/lib"\n\nfunc main() { println(lib.Hi()) }\n')
    (source / "vendor/example.com/lib/lib.go").write_text('package lib\n\nfunc Hi() string { return "hi" }\n')
    (source / "vendor/modules.txt").write_text("# example.com/lib v1.2.3\n## explicit\nexample.com/lib\n")
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=vendor", GOPROXY="off", GOTOOLCHAIN="local",
               GOCACHE=str(tmp_path / "cache"), GOPATH=str(tmp_path / "gopath"))  # nothing left outside tmp_path
    subprocess.run(["go", "build", "-o", str(tmp_path / "built"), "."], cwd=source, env=env, check=True,
                   capture_output=True, timeout=600)
    version = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()
    assert _go_packages((tmp_path / "built").read_bytes()) == {("stdlib", version), ("example.com/lib", "v1.2.3")}

    db = tmp_path / "osv"
    db.mkdir()
    (db / "TEST-GO.json").write_text(json.dumps({"id": "TEST-GO-1", "affected": [
        {"package": {"ecosystem": "Go", "name": "example.com/lib"},
         "ranges": [{"type": "SEMVER", "events": [{"introduced": "1.2.0"}, {"fixed": "1.2.4"}]}]}]}))
    archive = fixtures.save_archive(tmp_path / "built.tar", [fixtures.layer(
        {"app/built": (tmp_path / "built").read_bytes()}, {"app/built": 0o755})])
    table = run_machines("scan", str(archive), "--db", str(db))
    assert table.code == 0, table.err
    assert table.out.splitlines()[1].split() == ["TEST-GO-1", "example.com/lib", "v1.2.3", "1.2.4", "unknown"]


def test_the_go_toolchain_itself():
    """The go command carries the build info magic twice (once as debug/buildinfo's constant): the header read is
    the one in the ``.go.buildinfo`` section."""
    go = Path(shutil.which("go") or "go").resolve()
    binary = go.read_bytes()
    assert binary.count(gobinary.GO_MAGIC) >= 2
    version = subprocess.run([str(go), "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout
    assert _go_packages(binary) == {("stdlib", version.strip())}


def test_damaged_build_info_yields_nothing():
    good = bytearray(fixtures.go_binary_before_1_18("go1.16.2", fixtures.GO_MODINFO))
    header = good.find(gobinary.GO_MAGIC)
    cases = {}
    outside = bytearray(good)
    struct.pack_into("<Q", outside, header + 16, 0x10)  # the version's string header: no segment maps it
    cases["pointer outside"] = outside
    huge = bytearray(good)
    struct.pack_into("<Q", huge, header + 64 + 8, 1 << 62)  # the version string: 4 EiB long
    cases["huge length"] = huge
    many = bytearray(good)
    struct.pack_into("<H", many, 56, 0xFFFF)  # 65535 program headers in a 4 KiB header area
    cases["program headers past the end"] = many
    cases["truncated"] = good[:40]
    cases["pointer size 3"] = good[:header + 14] + b"\x03" + good[header + 15:]
    inline = bytearray(fixtures.go_binary("go1.20", fixtures.GO_MODINFO))
    at = inline.find(gobinary.GO_MAGIC) + 32
    inline[at:at + 10] = b"\xff" * 10  # a varint that never ends
    cases["endless varint"] = inline
    long_string = bytearray(fixtures.go_binary("go1.20", fixtures.GO_MODINFO))
    long_string[at:at + 4] = b"\xff\xff\xff\x7f"  # a version of 256 MiB, longer than the data that follows
    cases["inline string past the end"] = long_string
    for name, data in cases.items():
        assert gobinary.build_info(bytes(data)) is None, name
        assert _go_packages(bytes(data)) == set(), name
