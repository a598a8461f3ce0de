"""``machines scan`` on images in every package format, against the OSV records in tests/scan/osv."""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path

import pytest

from machines.errors import ScanError
from machines.runtime.images.scan import osv
from machines.runtime.images.scan.inventory import scan_layers
from machines.scan import report
from machines.scan.scan import inventory, vulnerabilities
from tests.scan import fixtures
from tests.trust.conftest import run_machines

OSV_DB = Path(__file__).parent / "osv"
TODAY = datetime.date(2026, 1, 1)


@pytest.fixture
def alpine_archive(tmp_path) -> Path:
    return fixtures.save_archive(tmp_path / "alpine.tar", fixtures.alpine_layers())


@pytest.fixture
def rpm_archive(tmp_path) -> Path:
    return fixtures.save_archive(tmp_path / "alma.tar", fixtures.rpm_layers())


def _names(found):
    return {(p.kind, p.name, p.version) for p in found.packages}


def test_alpine_python_npm_and_go_inventory(alpine_archive):
    found = inventory(str(alpine_archive))
    assert found.os_release["ID"] == "alpine"
    assert _names(found) == {
        ("apk", "musl", "1.2.3-r0"), ("apk", "zlib", "1.2.12-r1"), ("apk", "libssl1.1", "1.1.1q-r0"),
        ("apk", "mariadb-client", "10.6.7-r0"),
        ("python", "requests", "2.28.0"), ("python", "Old_Thing", "0.9"),  # urllib3 was whited out above
        ("npm", "lodash", "4.17.20"), ("npm", "@scope/tool", "1.0.0"),  # app/package.json is not a dependency
        ("go", "stdlib", "go1.18.1"), ("go", "golang.org/x/text", "v0.3.7"),
        ("go", "golang.org/x/net", "v0.0.0-20220722155237-a158d28d115b"),
        ("go", "github.com/new/name", "v1.2.0")}  # the replacement, not the replaced module; (devel) left out
    ssl = next(p for p in found.packages if p.name == "libssl1.1")
    assert ssl.source == "openssl" and ssl.path == "/lib/apk/db/installed"


def test_rpm_sqlite_inventory(rpm_archive):
    found = inventory(str(rpm_archive))
    assert _names(found) == {("rpm", "openssl-libs", "1:1.1.1k-5.el8_5"), ("rpm", "bash", "4.4.20-4.el8_6")}
    assert next(p for p in found.packages if p.name == "openssl-libs").source == "openssl"


def test_opaque_directories_hide_lower_layers():
    lower = fixtures.layer({"app/node_modules/lodash/package.json": b'{"name": "lodash", "version": "4.17.20"}'})
    upper = fixtures.layer({"app/node_modules/.wh..wh..opq": None,
                            "app/node_modules/left-pad/package.json": b'{"name": "left-pad", "version": "1.3.0"}'})
    found = scan_layers([io.BytesIO(lower), io.BytesIO(upper)])
    assert _names(found) == {("npm", "left-pad", "1.3.0")}


def test_findings_with_each_ecosystems_order_and_severity(alpine_archive, rpm_archive):
    alpine = vulnerabilities("alpine", inventory(str(alpine_archive)), OSV_DB, today=TODAY)
    got = {(f.id, f.package.name, f.package.version, f.fixed, f.severity, f.score) for f in alpine.findings}
    assert got == {
        ("CVE-2022-27449", "mariadb-client", "10.6.7-r0", "10.6.8-r0", "unknown", None),  # Alpine:v3.16's fix
        ("ALPINE-CVE-2025-26519", "musl", "1.2.3-r0", "1.2.3-r4", "high", 7.0),
        ("GHSA-35jh-r3h4-6jhm", "lodash", "4.17.20", "4.17.21", "high", 7.2),  # CVSS_V3 vector
        ("GHSA-j8r2-6x86-q33q", "requests", "2.28.0", "2.31.0", "medium", 6.1),
        ("GO-2022-0969", "stdlib", "go1.18.1", "1.18.6", "unknown", None),  # the first of two windows
        ("GO-2022-0969", "golang.org/x/net", "v0.0.0-20220722155237-a158d28d115b",
         "0.0.0-20220906165146-f3363e06e74c", "unknown", None),  # pseudo-versions
        ("GO-2022-1059", "golang.org/x/text", "v0.3.7", "0.3.8", "unknown", None)}
    assert [f.severity for f in alpine.findings][:3] == ["high", "high", "medium"]  # most severe first
    assert next(f.aliases for f in alpine.findings if f.package.name == "musl") == ("CVE-2025-26519",)  # upstream
    assert [f.summary for f in alpine.findings if f.id == "CVE-2022-27449"] == [  # no summary: details' first line
        "MariaDB Server v10.9 and below was discovered to contain a segmentation fault via the component "
        "sql/item_func.cc:148."]
    alma = vulnerabilities("alma", inventory(str(rpm_archive)), OSV_DB, today=TODAY)
    assert [(f.id, f.package.name, f.fixed, f.aliases) for f in alma.findings] == [
        ("ALSA-2022:1065", "openssl-libs", "1:1.1.1k-6.el8_5", ())]  # its CVE is under "related", not an alias


def test_a_debian_9_status_against_published_dla_records(tmp_path):
    """DLA-3008-1, -3012-1, -3022-1 and -3051-1 as osv.dev serves them (Debian:9, source packages, ``~`` and ``+``
    in the fixed versions, an explicit ``versions`` list, the CVE under ``upstream``)."""
    archive = fixtures.save_archive(tmp_path / "stretch.tar", fixtures.debian9_layers())
    result = vulnerabilities("stretch", inventory(str(archive)), OSV_DB, today=TODAY)
    assert [(f.id, f.package.name, f.package.version, f.fixed, f.severity) for f in result.findings] == [
        ("DLA-3022-1", "dpkg", "1.18.25", "1.18.26", "unknown"),
        ("DLA-3008-1", "libssl1.1", "1.1.0l-1~deb9u5", "1.1.0l-1~deb9u6", "unknown"),  # by its source, openssl
        ("DLA-3051-1", "tzdata", "2021a-0+deb9u3", "2021a-0+deb9u4", "unknown")]  # libxml2 is at its fix already
    assert result.findings[1].aliases == ("CVE-2022-1292", "DEBIAN-CVE-2022-1292")
    assert result.findings[1].summary == "openssl - security update"


def test_fixed_versions_are_not_reported_and_other_releases_do_not_match(tmp_path):
    records = tmp_path / "db"
    records.mkdir()
    (records / "r.json").write_text(json.dumps({"id": "TEST-1", "affected": [
        {"package": {"ecosystem": "Alpine:v3.17", "name": "zlib"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]},
        {"package": {"ecosystem": "Alpine:v3.16", "name": "musl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.2.3-r0"}]}]},
        {"package": {"ecosystem": "Alpine:v3.16", "name": "openssl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "1.1.1a-r0"}, {"last_affected": "1.1.1q-r0"}]}]},
    ]}))
    (records / "withdrawn.json").write_text(json.dumps({"id": "TEST-2", "withdrawn": "2024-01-01T00:00:00Z",
        "affected": [{"package": {"ecosystem": "Alpine", "name": "musl"}, "versions": ["1.2.3-r0"]}]}))
    layers = [io.BytesIO(layer) for layer in fixtures.alpine_layers()]
    result = vulnerabilities("x", scan_layers(layers), records, today=TODAY)
    assert [(f.id, f.package.name, f.fixed) for f in result.findings] == [("TEST-1", "libssl1.1", None)]


def test_range_events_are_evaluated_as_the_osv_schema_says(tmp_path):
    """OSV's IncludedInRanges/BeforeLimits: events in version order whatever their order in the file, ``limit``
    bounds a range (``*`` = none), a fix is reported only from the window the version is in."""
    records = tmp_path / "db"
    records.mkdir()
    (records / "r.json").write_text(json.dumps({"id": "TEST-R", "upstream": ["CVE-0000-1"], "affected": [
        {"package": {"ecosystem": "Alpine:v3.16", "name": "zlib"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"limit": "1.2.12-r0"}]}]},
        {"package": {"ecosystem": "Alpine:v3.16", "name": "musl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"limit": "*"}, {"introduced": "0"}, {"introduced": 5}]}]},
        {"package": {"ecosystem": "Alpine:v3.16", "name": "openssl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "1.1.1q-r0"}, {"fixed": "1.1.1t-r0"},
                                                     {"introduced": "0"}, {"fixed": "1.1.1k-r0"}]}]},
        {"package": {"ecosystem": "Alpine:v3.16", "name": "mariadb"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"last_affected": "10.6.7-r0"}]},
                    {"type": "ECOSYSTEM", "events": [{"introduced": "10.7.0-r0"}, {"fixed": "10.7.3-r0"}]},
                    {"type": "GIT", "repo": "https://example.invalid/x", "events": [{"introduced": "abc"}]}]},
    ]}))
    result = vulnerabilities("x", scan_layers([io.BytesIO(layer) for layer in fixtures.alpine_layers()]), records,
                             today=TODAY)
    assert {(f.package.name, f.fixed) for f in result.findings} == {
        ("musl", None), ("libssl1.1", "1.1.1t-r0"), ("mariadb-client", None)}
    assert {f.aliases for f in result.findings} == {("CVE-0000-1",)}  # OSV 1.7's upstream ids count as aliases


@pytest.mark.parametrize(("os_release", "ecosystem"), [
    ({"ID": "debian", "VERSION_ID": "12"}, "Debian:12"),
    ({"ID": "alpine", "VERSION_ID": "3.16.2"}, "Alpine:v3.16"),
    ({"ID": "almalinux", "VERSION_ID": "8.6"}, "AlmaLinux:8"),
    ({"ID": "ubuntu", "VERSION_ID": "22.04"}, "Ubuntu:22.04"),  # matches the records' Ubuntu:22.04:LTS
    ({"ID": "opensuse-leap", "VERSION_ID": "15.5"}, "openSUSE:Leap 15.5"),
    ({"ID": "rhel", "VERSION_ID": "9.2", "CPE_NAME": "cpe:/o:redhat:enterprise_linux:9::baseos"},
     "Red Hat:enterprise_linux:9::baseos"),
    ({"ID": "debian"}, "Debian"),  # testing and sid have no VERSION_ID
    ({"ID": "gentoo"}, None),
])
def test_os_release_to_osv_ecosystem(os_release, ecosystem):
    """As the OSV schema names the ecosystems and osv-scalibr maps os-release to them."""
    from machines.runtime.images.scan.inventory import Inventory, Package

    package = Package("zlib", "1", "rpm", "/var/lib/rpm/rpmdb.sqlite")
    assert osv.ecosystem_of(package, Inventory([package], os_release)) == ecosystem


def test_ignore_file_reasons_expiry_and_unfixed(alpine_archive, tmp_path):
    ignore = tmp_path / ".trivyignore"
    ignore.write_text("# accepted risks\nCVE-2021-23337 exp:2026-06-30  # template() is never given user input\n"
                      "GO-2022-0969 exp:2025-12-31 # was waiting for go1.18.6\n"
                      "CVE-2025-26519  # no EUC-KR text is converted\n")
    result = vulnerabilities("a", inventory(str(alpine_archive)), OSV_DB, ignore_file=ignore, today=TODAY)
    assert sorted((f.id, entry.reason) for f, entry in result.ignored) == [
        ("ALPINE-CVE-2025-26519", "no EUC-KR text is converted"),  # by the CVE its record names as upstream
        ("GHSA-35jh-r3h4-6jhm", "template() is never given user input")]  # matched by its alias
    assert [entry.id for entry in result.expired] == ["GO-2022-0969"]
    assert "GO-2022-0969" in {f.id for f in result.findings}
    unfixed = tmp_path / "db"
    unfixed.mkdir()
    (unfixed / "u.json").write_text(json.dumps({"id": "TEST-U", "affected": [
        {"package": {"ecosystem": "PyPI", "name": "Old-Thing"}, "versions": ["0.9"]}]}))
    found = inventory(str(alpine_archive))
    assert [f.id for f in vulnerabilities("a", found, unfixed, today=TODAY).findings] == ["TEST-U"]
    assert vulnerabilities("a", found, unfixed, ignore_unfixed=True, today=TODAY).findings == []
    ignore.write_text("CVE-1 exp:31-12-2026\n")
    with pytest.raises(ScanError, match="bad expiry date '31-12-2026'"):
        vulnerabilities("a", found, OSV_DB, ignore_file=ignore)


def test_cli_table_json_sarif_and_fail_on(alpine_archive):
    table = run_machines("scan", str(alpine_archive), "--db", str(OSV_DB))
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[0].split() == ["ID", "PACKAGE", "INSTALLED", "FIXED", "SEVERITY", "CVSS"]
    assert lines[1].split() == ["GHSA-35jh-r3h4-6jhm", "lodash", "4.17.20", "4.17.21", "high", "7.2"]
    assert lines[-1] == "12 packages (alpine 3.16.2); 7 vulnerabilities: 2 high, 1 medium, 4 unknown"

    as_json = json.loads(run_machines("scan", str(alpine_archive), "--db", str(OSV_DB), "--format", "json").out)
    assert as_json["packages"] == 12 and len(as_json["vulnerabilities"]) == 7
    assert as_json["vulnerabilities"][0]["aliases"] == ["CVE-2021-23337"]

    sarif = json.loads(run_machines("scan", str(alpine_archive), "--db", str(OSV_DB), "--format", "sarif").out)
    assert sarif["version"] == "2.1.0"
    results = sarif["runs"][0]["results"]
    assert {r["ruleId"]: r["level"] for r in results}["GHSA-35jh-r3h4-6jhm"] == "error"
    mariadb = next(r for r in results if r["ruleId"] == "CVE-2022-27449")
    assert mariadb["level"] == "note"
    assert mariadb["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "lib/apk/db/installed"

    assert run_machines("scan", str(alpine_archive), "--db", str(OSV_DB), "--fail-on", "critical").code == 0
    assert run_machines("scan", str(alpine_archive), "--db", str(OSV_DB), "--fail-on", "high").code == 1
    clean = run_machines("scan", str(alpine_archive), "--db", str(OSV_DB), "--fail-on", "low", "--ignore-unfixed")
    assert clean.code == 1  # everything here has a fix
    bad = run_machines("scan", str(alpine_archive), "--db", str(OSV_DB), "--fail-on", "severe")
    assert bad.code == 2 and "Traceback" not in bad.err


def test_sboms_validate_against_their_schemas(alpine_archive, tmp_path):
    cdx = run_machines("scan", str(alpine_archive), "--sbom", "cyclonedx")
    assert cdx.code == 0, cdx.err
    bom = json.loads(cdx.out)
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5"
    purls = {c["purl"] for c in bom["components"]}
    assert "pkg:apk/alpine/zlib@1.2.12-r1?arch=x86_64&distro=alpine-3.16.2" in purls
    assert "pkg:npm/%40scope/tool@1.0.0" in purls and "pkg:golang/golang.org/x/text@v0.3.7" in purls

    out = tmp_path / "sbom.spdx.json"
    spdx = run_machines("scan", str(alpine_archive), "--sbom", "spdx", "--sbom-file", str(out), "--db", str(OSV_DB))
    assert spdx.code == 0, spdx.err
    assert "CVE-2022-27449" in spdx.out  # the report still follows
    doc = json.loads(out.read_text())
    assert doc["spdxVersion"] == "SPDX-2.3" and len(doc["packages"]) == 13
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    assert validate_full_spdx_document(parse_file(str(out))) == []


def test_missing_data_and_offline_update_fail_clearly(alpine_archive, tmp_path):
    empty = run_machines("scan", str(alpine_archive), "--db", str(tmp_path / "none"))
    assert empty.code == 1
    assert empty.err.strip().startswith(f"Error: no OSV data in {tmp_path / 'none'}: run with --db-update")
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: like a workstation without internet access
    update = run_machines("scan", str(alpine_archive), "--db", str(tmp_path / "db"), "--db-update",
                          env={"MACHINES_OSV_URL": f"http://127.0.0.1:{port}"})
    assert update.code == 1
    assert update.err.strip().startswith(f"Error: cannot download OSV data from http://127.0.0.1:{port}/")
    assert "--db-update needs internet access" in update.err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["alpine.tar"]  # no database, no partial file


def test_a_distribution_osv_has_no_data_for_is_not_passed_off_as_clean(tmp_path):
    """Amazon Linux 2 (an rpm database, ``ID=amzn``): OSV publishes no ecosystem for it, so its packages are listed
    and the user is told they were not matched, while its Python packages are still matched."""
    layers = fixtures.rpm_layers()
    layers[0] = fixtures.layer({"etc/os-release": b'NAME="Amazon Linux"\nID="amzn"\nVERSION_ID="2"\n',
                                "var/lib/rpm/rpmdb.sqlite": fixtures.rpmdb([
                                    {1000: "openssl-libs", 1001: "1.0.2k", 1002: "24.amzn2.0.4", 1003: 1,
                                     1022: "x86_64", 1044: "openssl-1.0.2k-24.amzn2.0.4.src.rpm"}])})
    archive = fixtures.save_archive(tmp_path / "amzn.tar", layers)
    result = run_machines("scan", str(archive), "--db", str(OSV_DB), "--format", "json")
    assert result.code == 0, result.err
    assert "Warning: amzn 2: OSV publishes no data for this distribution: its 1 packages are listed, not matched" \
        in result.err.splitlines()
    assert json.loads(result.out)["warnings"] == [
        "amzn 2: OSV publishes no data for this distribution: its 1 packages are listed, not matched"]
    alma = run_machines("scan", str(fixtures.save_archive(tmp_path / "alma.tar", fixtures.rpm_layers())),
                        "--db", str(OSV_DB))
    assert "OSV publishes no data" not in alma.err


def test_not_an_image(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all")
    result = run_machines("scan", str(junk), "--db", str(OSV_DB))
    assert result.code == 1 and result.err.startswith(f"Error: {junk}: not an image archive")


def test_cvss_scores():
    assert osv.cvss3_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H") == 9.8
    assert osv.cvss3_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N") == 6.1
    assert osv.cvss3_score("CVSS:3.0/AV:L/AC:L/PR:L/UI:N/S:U/C:N/I:N/A:N") == 0.0
    assert osv.cvss3_score("CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:C/C:H/I:H/A:H") == 9.9
    assert osv.cvss3_score("AV:N/AC:L/Au:N/C:P/I:P/A:P") is None  # CVSS v2: not graded
    assert report.at_or_above([], "low") == []


def test_cvss4_scores_of_red_hats_test_vectors():
    """Every vector of tests/scan/cvsscases (Red Hat's cvss library's cases: base, threat, environmental)."""
    import ast

    from machines.runtime.images.scan.cvss4 import cvss4_score

    checked = 0
    for path in sorted((Path(__file__).parent / "cvsscases").glob("vectors_*")):
        for line in path.read_text().splitlines():
            vector, expected = line.split(" - ")
            score = ast.literal_eval(expected)
            assert cvss4_score(vector) == (score[0] if isinstance(score, tuple) else score), (path.name, vector)
            checked += 1
    assert checked == 1058 + 6 + 54
    for bad in ["CVSS:4.0/AV:N", "CVSS:4.0/AV:NA/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
                "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "CVSS:4.0/AV:N/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H"
                "/SC:N/SI:N/SA:N", "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N/ZZ:1", ""]:
        assert cvss4_score(bad) is None, bad


def test_the_v4_vector_grades_a_record_before_the_v3_one_and_the_databases_word():
    v3 = {"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}  # 9.8
    v4 = {"type": "CVSS_V4", "score": "CVSS:4.0/AV:N/AC:H/AT:N/PR:H/UI:N/VC:H/VI:N/VA:N/SC:N/SI:N/SA:N"}
    word = {"database_specific": {"severity": "LOW"}}
    assert osv.severity_of({"severity": [v3, v4], **word}, {}) == ("medium", 5.9)
    assert osv.severity_of({"severity": [v3], **word}, {}) == ("critical", 9.8)
    assert osv.severity_of({"severity": [{"type": "CVSS_V4", "score": "CVSS:4.0/bad"}], **word}, {}) == ("low", None)
    assert osv.severity_of(word, {"severity": [v4]}) == ("medium", 5.9)  # a package's own severity counts too


def test_docker_save_output_of_the_runtime_and_an_oci_layout(tmp_path):
    from machines.runtime.images.service import ImageService
    from machines.runtime.images.store import ImageStore

    service = ImageService(ImageStore(str(tmp_path / "data" / "image")))
    base, upper = fixtures.alpine_layers()
    image = service.store.resolve(service.store.import_tar(io.BytesIO(base)))
    folder = tmp_path / "upper"
    (folder / "app/node_modules").mkdir(parents=True)
    (folder / "app/node_modules/.wh.lodash").write_bytes(b"")  # a whiteout entry in the committed layer
    service.store.commit(str(folder), image, None, "saved:1")
    archive = tmp_path / "saved.tar"
    archive.write_bytes(b"".join(service.save(["saved:1"])))
    found = inventory(str(archive))
    names = {p.name for p in found.packages}
    assert "zlib" in names and "requests" in names and "lodash" not in names

    import gzip
    import hashlib
    import tarfile

    def blob(data: bytes) -> tuple[str, bytes]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), data

    layers = [blob(gzip.compress(layer)) for layer in fixtures.rpm_layers()]
    manifest = blob(json.dumps({"schemaVersion": 2, "layers": [{"digest": d, "size": len(b)} for d, b in layers],
                                "config": {"digest": blob(b"{}")[0], "size": 2}}).encode())
    index = json.dumps({"schemaVersion": 2, "manifests": [{"digest": manifest[0], "size": len(manifest[1])}]})
    oci = tmp_path / "oci.tar"
    with tarfile.open(oci, "w") as tar:
        for name, data in [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", index.encode()),
                           *[("blobs/" + d.replace(":", "/"), b) for d, b in [*layers, manifest]]]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert {p.name for p in inventory(str(oci)).packages} == {"openssl-libs", "bash"}
