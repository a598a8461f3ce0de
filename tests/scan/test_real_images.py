"""Scanning the debootstrap-made Debian 12 image (its real dpkg status) and an image read from a registry."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from machines.runtime.images.scan.versions import dpkg_compare
from machines.runtime.images.service import ImageService
from machines.runtime.images.store import ImageStore
from machines.scan.scan import inventory, vulnerabilities
from tests.scan import fixtures
from tests.trust.conftest import run_machines

OSV_DB = Path(__file__).parent / "osv"
UNVERIFIED = Path(__file__).parent / "osv-unverified"  # hand-written Debian 12 records: see its README


def test_the_debian_image_real_dpkg_status(debian_tar, tmp_path):
    found = inventory(str(debian_tar))
    assert (found.os_release["ID"], found.os_release["VERSION_ID"]) == ("debian", "12")
    by_name = {p.name: p for p in found.packages}
    assert len(by_name) > 150 and {p.kind for p in found.packages} == {"dpkg"}
    assert {"nginx-light", "postgresql-15", "redis-server", "curl", "procps", "python3", "libc6"} <= by_name.keys()
    assert by_name["libssl3"].source == "openssl"  # advisories name source packages
    assert by_name["libc6"].source == "glibc"

    assert vulnerabilities(str(debian_tar), found, OSV_DB).findings == []  # published records: other releases only
    db = tmp_path / "db"
    shutil.copytree(OSV_DB, db / "published")
    shutil.copytree(UNVERIFIED, db / "unverified")
    result = vulnerabilities(str(debian_tar), found, db)
    got = {(f.id, f.package.name, f.fixed) for f in result.findings}
    assert got == {("DEBIAN-CVE-2005-2541", "tar", None), ("DEBIAN-CVE-2011-3374", "apt", None),
                   ("DEBIAN-CVE-2011-3374", "libapt-pkg6.0", None)}  # every binary package of source apt
    # DSA-3029-1 names source nginx in Debian:7 only, DLA-3022-1 dpkg in Debian:9: neither matches this image
    assert by_name["nginx-light"].source == "nginx" and "dpkg" in by_name
    # curl's SOCKS5 overflow was fixed in 7.88.1-10+deb12u3; this image's curl is at least that
    assert dpkg_compare(by_name["curl"].version, "7.88.1-10+deb12u3") >= 0
    assert vulnerabilities(str(debian_tar), found, db, ignore_unfixed=True).findings == []


def test_scanning_an_image_in_a_registry(tmp_path, registry):
    service = ImageService(ImageStore(str(tmp_path / "data" / "image")))
    store = service.store
    base, upper = fixtures.alpine_layers()
    image = store.resolve(store.import_tar(io.BytesIO(base)))
    folder = tmp_path / "upper"
    (folder / "usr/lib/python3.10/site-packages").mkdir(parents=True)
    store.commit(str(folder), image, None, f"{registry.host}/scan/alpine:1")
    list(service.push(f"{registry.host}/scan/alpine:1"))
    result = run_machines("scan", f"{registry.host}/scan/alpine:1", "--db", str(OSV_DB), "--format", "json")
    assert result.code == 0, result.err
    assert "CVE-2022-27449" in result.out and '"packages": 13' in result.out  # urllib3 still there
    missing = run_machines("scan", f"{registry.host}/scan/none:1", "--db", str(OSV_DB))
    assert missing.code == 1
    assert missing.err.strip() == f"Error: manifest for {registry.host}/scan/none:1 not found: manifest unknown: " \
                                  "manifest unknown"
