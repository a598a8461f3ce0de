"""Each ecosystem's version order on its hard cases (epochs, tildes, carets, apk suffixes, PEP 440, semver)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from machines.runtime.images.scan.versions import (
    BadVersion,
    apk_compare,
    dpkg_compare,
    pep440_compare,
    rpm_compare,
    semver_compare,
    sort_key,
)


def _assert_order(compare, ordered):
    for i, low in enumerate(ordered):
        assert compare(low, low) == 0
        for high in ordered[i + 1:]:
            assert compare(low, high) < 0, (low, high)
            assert compare(high, low) > 0, (high, low)


def test_dpkg_epochs_tildes_and_revisions():
    _assert_order(dpkg_compare, [
        "1.0~~", "1.0~~a", "1.0~", "1.0", "1.0-0.1", "1.0-1~bpo1", "1.0-1", "1.0-1+deb12u1", "1.0-1+deb12u2",
        "1.0-1+deb12u10", "1.0a", "1.0+b1", "1.0.1", "1.10", "2.0", "1:0.1", "2:0.0.1"])  # letters before symbols
    assert dpkg_compare("7.88.1-10+deb12u3", "7.88.1-10+deb12u15") < 0
    assert dpkg_compare("3.0.20-1~deb12u2", "3.0.20-1") < 0
    assert dpkg_compare("1.01", "1.1") == 0  # leading zeros of numeric parts do not count


@pytest.mark.parametrize("bad", ["", "a1.0", "1:", "x:1.0", "1.0 beta",
                                 # dpkg's lib/dpkg/t/t-version.c (guillemj/dpkg c5efef92): parseversion refuses these
                                 "  ", ":1.0", "1.0-", "0:0 0-1", "-1:0-1", "999999999999999999999999:0-1", "a:0-0",
                                 "A:0-0", "-0", "0:-0", "0:abc3-0", "0:0-0:0", "0:0_-0", "0:0a-0!", "0:0-0_"])
def test_dpkg_refuses_bad_versions(bad):
    with pytest.raises(BadVersion):
        dpkg_compare(bad, "1.0")


def test_rpm_tildes_carets_epochs_and_releases():
    _assert_order(rpm_compare, [
        "1.0~rc1", "1.0~rc2", "1.0", "1.0^git1", "1.0^git2", "1.0a", "1.0.1~rc1", "1.0.1", "1.1", "1.10",
        "1:0.5"])
    assert rpm_compare("1:1.1.1k-5.el8_5", "1:1.1.1k-6.el8_5") < 0
    assert rpm_compare("1.1.1k-6.el8_5", "1:1.1.1a-1") < 0  # no epoch is epoch 0
    assert rpm_compare("2.0-1", "2.0") > 0  # rpmverCmp: a missing release sorts before any release
    assert rpm_compare("1.0a", "1.0.1") < 0  # numeric segments are newer than alphabetic ones
    assert rpm_compare("1.0", "1_0") == 0  # separators only separate


def test_apk_suffixes_letters_and_releases():
    _assert_order(apk_compare, [
        "1.2.3_alpha", "1.2.3_alpha2", "1.2.3_beta", "1.2.3_pre1", "1.2.3_rc1", "1.2.3_rc2", "1.2.3", "1.2.3_cvs", "1.2.3_svn", "1.2.3_git20230101", "1.2.3_hg", "1.2.3_p1",
        "1.2.3_p2", "1.2.3a", "1.2.3b", "1.2.4", "1.2.10", "1.3"])
    _assert_order(apk_compare, ["1.2.3", "1.2.3-r1", "1.2.3-r2", "1.2.3-r10"])
    _assert_order(apk_compare, ["1.2.3_rc1-r5", "1.2.3-r0", "1.2.3_p1-r0"])
    assert apk_compare("1.02", "1.1") < 0  # a leading zero makes apk compare the digits as a string
    assert apk_compare("1.2.3~abc123-r0", "1.2.3-r0") > 0  # a commit hash token comes before the revision's
    assert apk_compare("1.2.3~abc123-r0", "1.2.3~abd-r0") < 0


def test_pep440_pre_post_dev_and_local():
    _assert_order(pep440_compare, [
        "1.0.dev1", "1.0a1", "1.0a2.dev1", "1.0a2", "1.0b1", "1.0rc1", "1.0", "1.0+local", "1.0.post1.dev1",
        "1.0.post1", "1.1", "1!0.1"])
    assert pep440_compare("2.31", "2.31.0") == 0
    with pytest.raises(BadVersion):
        pep440_compare("not a version", "1.0")


def test_semver_prereleases_and_go_versions():
    _assert_order(semver_compare, [
        "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
        "1.0.0-rc.1", "1.0.0", "1.0.1", "1.10.0"])
    assert semver_compare("1.0.0+build.1", "1.0.0+build.2") == 0
    assert semver_compare("v0.3.7", "0.3.8") < 0
    assert semver_compare("v0.0.0-20220101000000-abcdef123456", "0.0.1") < 0  # Go pseudo-versions
    _assert_order(semver_compare, ["go1.18rc1", "go1.18", "go1.18.1", "1.18.6", "go1.19beta1", "1.19.0"])
    with pytest.raises(BadVersion):
        semver_compare("1.0", "1.0.0")


def test_sort_key_sorts_with_the_ecosystem_order():
    assert sorted(["1.0-1", "1:0.1", "1.0~rc1-1"], key=sort_key("dpkg")) == ["1.0~rc1-1", "1.0-1", "1:0.1"]


def _pep440_versions():
    from hypothesis import strategies as st

    number = st.integers(min_value=0, max_value=12)
    release = st.lists(number, min_size=1, max_size=4).map(lambda parts: ".".join(map(str, parts)))
    pre = st.one_of(st.just(""), st.tuples(st.sampled_from(["a", "alpha", "b", "beta", "c", "rc", "pre", "preview"]),
                                           st.one_of(st.just(""), number.map(str))).map("".join))
    post = st.one_of(st.just(""), number.map(lambda n: f".post{n}"), number.map(lambda n: f"-{n}"), st.just(".rev"))
    dev = st.one_of(st.just(""), number.map(lambda n: f".dev{n}"), st.just("-dev"))
    local = st.one_of(st.just(""), st.lists(st.one_of(number.map(str), st.sampled_from(["ubuntu", "abc", "x1"])),
                                            min_size=1, max_size=3).map(lambda parts: "+" + ".".join(parts)))
    epoch = st.one_of(st.just(""), st.integers(min_value=1, max_value=2).map(lambda n: f"{n}!"))
    return st.tuples(epoch, release, pre, post, dev, local).map("".join)


def test_the_standard_library_pep440_order_is_packagings():
    """The runtime may not use ``packaging``: its own PEP 440 order must agree with it everywhere."""
    from hypothesis import given, settings
    from packaging.version import Version

    def sign(n):
        return (n > 0) - (n < 0)

    @settings(max_examples=3000, deadline=None)
    @given(_pep440_versions(), _pep440_versions())
    def agree(a, b):
        expected = (Version(a) > Version(b)) - (Version(a) < Version(b))
        assert sign(pep440_compare(a, b)) == expected, (a, b)

    agree()


# --- each tool's own test cases, copied into tests/scan/versioncases (sources in its README) --------------------

CASES = Path(__file__).parent / "versioncases"


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


def test_dpkg_cases_of_dpkg_perl_test_suite():
    """scripts/t/Dpkg_Version.t's __DATA__: ``a b expected``."""
    rows = [line.split() for line in (CASES / "dpkg-version.data").read_text().splitlines() if line.strip()]
    assert len(rows) == 43
    for a, b, expected in rows:
        assert _sign(dpkg_compare(a, b)) == int(expected), (a, b)
    # t-version.c: equal versions written differently, blanks around are trimmed
    for a, b in [("0", "0:0"), ("0:0-0", "0-0"), ("0:0.0-0.0", "0.0-0.0"), ("0:0-0-0", "0-0-0"),
                 ("0:0:0-0", "0:0:0-0"), ("0:09azAZ.-+~:-0", "0:09azAZ.-+~:-0"), ("0:0-azAZ09.+~", "0-azAZ09.+~"),
                 ("  \t0:0-1", "0-1"), ("0:0-1\t  ", "0-1"), ("0-00", "00-0")]:
        assert dpkg_compare(a, b) == 0, (a, b)


def test_rpm_cases_of_rpm_test_suite():
    """tests/rpmvercmp.at: ``RPMVERCMP(a, b, expected)``, checked there with ``rpm.vercmp``."""
    rows = re.findall(r"^RPMVERCMP\(([^,]*), ([^,]*), (-?\d)\)$", (CASES / "rpmvercmp.txt").read_text(), re.M)
    assert len(rows) == 91
    for a, b, expected in rows:
        assert _sign(rpm_compare(a, b)) == int(expected), (a, b)


def test_apk_cases_of_apk_tools_test_suite():
    """test/unit/version.data: ``a op b`` lines with op one of <, >, = (fuzzy ``~`` matches are dependency syntax
    and bare validity lines are not orderings: both left out)."""
    checked = 0
    for line in (CASES / "apk-version.data").read_text().splitlines():
        parts = line.split("#")[0].split()
        if len(parts) != 3 or parts[1].lstrip("!") not in ("<", ">", "=", "<=", ">="):
            continue
        a, op, b = parts
        negate, op = op.startswith("!"), op.lstrip("!")
        result = {-1: "<", 0: "=", 1: ">"}[_sign(apk_compare(a, b))]
        assert (result in op) != negate, line
        checked += 1
    assert checked > 700


def test_pep440_cases_of_packaging_test_suite():
    """tests/test_version.py's VERSIONS, "in the correct sorting order"."""
    versions = (CASES / "packaging-versions.txt").read_text().split()
    assert len(versions) == 92
    _assert_order(pep440_compare, versions)


@pytest.mark.parametrize(("high", "low"), [
    # npm/node-semver test/fixtures/comparisons.js (6e05b763), the strict rows: the first is greater
    ("0.0.0", "0.0.0-foo"), ("0.0.1", "0.0.0"), ("1.0.0", "0.9.9"), ("0.10.0", "0.9.0"), ("0.99.0", "0.10.0"),
    ("2.0.0", "1.2.3"), ("1.2.3", "1.2.3-asdf"), ("1.2.3", "1.2.3-4"), ("1.2.3", "1.2.3-4-foo"),
    ("1.2.3-5-foo", "1.2.3-5"), ("1.2.3-5", "1.2.3-4"), ("1.2.3-5-foo", "1.2.3-5-Foo"), ("3.0.0", "2.7.2+asdf"),
    ("1.2.3-a.10", "1.2.3-a.5"), ("1.2.3-a.b", "1.2.3-a.5"), ("1.2.3-a.b", "1.2.3-a"),
    ("1.2.3-a.b.c.10.d.5", "1.2.3-a.b.c.5.d.100"), ("1.2.3-r2", "1.2.3-r100"), ("1.2.3-r100", "1.2.3-R2"),
    # and its loose rows that differ only by Go's ``v`` prefix
    ("v0.0.0", "0.0.0-foo"), ("v1.0.0", "0.9.9"), ("0.10.0", "v0.9.0"),
])
def test_semver_cases_of_node_semver(high, low):
    assert semver_compare(high, low) > 0 and semver_compare(low, high) < 0


def test_semver_build_metadata_is_ignored_as_node_semver_equality_says():
    # test/fixtures/equality.js, the strict rows
    assert semver_compare("1.2.3-beta+build", "1.2.3-beta+otherbuild") == 0
    assert semver_compare("1.2.3+build", "1.2.3+otherbuild") == 0
