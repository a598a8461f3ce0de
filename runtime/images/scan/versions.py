"""Version ordering of each ecosystem, as its own tools define it (never plain string or tuple order).

dpkg: Debian Policy 5.6.12 (epoch, upstream, revision; ``~`` sorts before everything, even the end). rpm: rpm's
``rpmvercmp`` with ``~`` (before) and ``^`` (after) and epochs. apk: apk-tools' order (``_alpha`` < ``_beta`` <
``_pre`` < ``_rc`` < no suffix < ``_cvs`` < ``_svn`` < ``_git`` < ``_hg`` < ``_p``, then ``-rN``). PyPI: PEP 440,
here in the standard library (the runtime scans images on arrival and may use nothing else) with ``packaging``'s
grammar and sort key; the tests hold it to ``packaging``'s order. npm and Go: Semantic Versioning 2.0 (Go's ``v``
prefix and ``go1.21`` toolchain names accepted).

Standard library only, Python 3.9: the runtime and ``machines scan`` share this module.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any


class BadVersion(ValueError):
    """A version string the ecosystem's grammar does not accept."""


def _cmp(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


# --- dpkg ----------------------------------------------------------------------------------------------------

def _dpkg_order(c: str) -> int:
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256 if c else 0


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _dpkg_order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _dpkg_order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return _cmp(ac, bc)
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = _cmp(a[i], b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _dpkg_split(version: str) -> tuple[int, str, str]:
    if not version or not version.isascii() or any(c.isspace() for c in version):
        raise BadVersion(version)
    epoch, colon, rest = version.partition(":")
    if not colon:
        epoch, rest = "0", version
    if not epoch.isdigit() or not rest or not rest[0].isdigit():
        raise BadVersion(version)
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return int(epoch), upstream, revision


def dpkg_compare(a: str, b: str) -> int:
    ea, ua, ra = _dpkg_split(a)
    eb, ub, rb = _dpkg_split(b)
    return _cmp(ea, eb) or _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


# --- rpm -----------------------------------------------------------------------------------------------------

def _alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def rpmvercmp(a: str, b: str) -> int:
    """rpm's segment comparison of one version or release field."""
    if a == b:
        return 0
    i = j = 0
    while i < len(a) or j < len(b):
        while i < len(a) and not _alnum(a[i]) and a[i] not in "~^":
            i += 1
        while j < len(b) and not _alnum(b[j]) and b[j] not in "~^":
            j += 1
        if (i < len(a) and a[i] == "~") or (j < len(b) and b[j] == "~"):
            if not (i < len(a) and a[i] == "~"):
                return 1
            if not (j < len(b) and b[j] == "~"):
                return -1
            i, j = i + 1, j + 1
            continue
        if (i < len(a) and a[i] == "^") or (j < len(b) and b[j] == "^"):
            if i >= len(a):
                return -1
            if j >= len(b):
                return 1
            if a[i] != "^":
                return 1
            if b[j] != "^":
                return -1
            i, j = i + 1, j + 1
            continue
        if not (i < len(a) and j < len(b)):
            break
        numeric = a[i].isdigit()
        kind = str.isdigit if numeric else str.isalpha
        si, sj = i, j
        while i < len(a) and a[i].isascii() and kind(a[i]):
            i += 1
        while j < len(b) and b[j].isascii() and kind(b[j]):
            j += 1
        one, two = a[si:i], b[sj:j]
        if not two:
            return 1 if numeric else -1
        if numeric:
            one, two = one.lstrip("0"), two.lstrip("0")
            if len(one) != len(two):
                return _cmp(len(one), len(two))
        if one != two:
            return _cmp(one, two)
    if i >= len(a) and j >= len(b):
        return 0
    return 1 if i < len(a) else -1


def _rpm_split(evr: str) -> tuple[int, str, str]:
    if not evr or any(c.isspace() for c in evr):
        raise BadVersion(evr)
    epoch, colon, rest = evr.partition(":")
    if not colon:
        epoch, rest = "0", evr
    if not epoch.isdigit():
        raise BadVersion(evr)
    version, _, release = rest.partition("-")
    return int(epoch), version, release


def rpm_compare(a: str, b: str) -> int:
    """``[EPOCH:]VERSION[-RELEASE]``; a missing release on either side is not compared (rpm's rule for ranges)."""
    ea, va, ra = _rpm_split(a)
    eb, vb, rb = _rpm_split(b)
    return _cmp(ea, eb) or rpmvercmp(va, vb) or (rpmvercmp(ra, rb) if ra and rb else 0)


# --- apk -----------------------------------------------------------------------------------------------------

APK_SUFFIXES = {"alpha": -4, "beta": -3, "pre": -2, "rc": -1, "cvs": 1, "svn": 2, "git": 3, "hg": 4, "p": 5}
APK_RE = re.compile(r"(\d+(?:\.\d+)*)([a-z]?)((?:_(?:alpha|beta|pre|rc|cvs|svn|git|hg|p)\d*)*)(?:~[0-9a-f]+)?"
                    r"(?:-r(\d+))?")


def _apk_key(version: str) -> tuple[list[str], str, list[tuple[int, int]], int]:
    match = APK_RE.fullmatch(version)
    if not match:
        raise BadVersion(version)
    numbers, letter, suffixes, release = match.groups()
    parsed = [(APK_SUFFIXES[m.group(1)], int(m.group(2) or 0))
              for m in re.finditer(r"_([a-z]+)(\d*)", suffixes)]
    return numbers.split("."), letter, parsed, int(release or 0)


def apk_compare(a: str, b: str) -> int:
    na, la, sa, ra = _apk_key(a)
    nb, lb, sb, rb = _apk_key(b)
    for index, (x, y) in enumerate(zip(na, nb)):
        if index and (x.startswith("0") or y.startswith("0")):  # apk: a leading zero makes it a fraction
            result = _cmp(x.rstrip("0"), y.rstrip("0"))
        else:
            result = _cmp(int(x), int(y))
        if result:
            return result
    if len(na) != len(nb):
        return _cmp(len(na), len(nb))
    if la != lb:
        return _cmp(la, lb)
    for index in range(max(len(sa), len(sb))):
        suffix_a = sa[index] if index < len(sa) else (0, 0)
        suffix_b = sb[index] if index < len(sb) else (0, 0)
        if suffix_a != suffix_b:
            return _cmp(suffix_a, suffix_b)
    return _cmp(ra, rb)


# --- PEP 440 and semver ----------------------------------------------------------------------------------------

PEP440_RE = re.compile(r"""
    v?(?:(?P<epoch>[0-9]+)!)?(?P<release>[0-9]+(?:\.[0-9]+)*)
    (?P<pre>[-_.]?(?P<pre_l>alpha|a|beta|b|preview|pre|c|rc)[-_.]?(?P<pre_n>[0-9]+)?)?
    (?P<post>(?:-(?P<post_n1>[0-9]+))|(?:[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>[0-9]+)?))?
    (?P<dev>[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>[0-9]+)?)?
    (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?""", re.VERBOSE | re.IGNORECASE)
PRE_LABELS = {"alpha": "a", "a": "a", "beta": "b", "b": "b", "c": "rc", "pre": "rc", "preview": "rc", "rc": "rc"}


def pep440_key(version: str) -> tuple[Any, ...]:
    """packaging's ``_cmpkey``: trailing zeros of the release ignored; a dev release of a final version sorts
    before its pre-releases; post-releases after the final; local labels after the public version."""
    match = PEP440_RE.fullmatch(version.strip())
    if not match:
        raise BadVersion(version)
    release = [int(part) for part in match.group("release").split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    pre_label, post, dev = match.group("pre_l"), match.group("post"), match.group("dev")
    if pre_label:
        pre: tuple[Any, ...] = (1, PRE_LABELS[pre_label.lower()], int(match.group("pre_n") or 0))
    else:
        pre = (-1,) if post is None and dev is not None else (2,)
    post_key = (0,) if post is None else (1, int(match.group("post_n1") or match.group("post_n2") or 0))
    dev_key = (1,) if dev is None else (0, int(match.group("dev_n") or 0))
    local = match.group("local")
    local_key = (0,) if local is None else (1, tuple(
        (1, int(part), "") if part.isdigit() else (0, 0, part.lower()) for part in re.split(r"[-_.]", local)))
    return int(match.group("epoch") or 0), tuple(release), pre, post_key, dev_key, local_key


def pep440_compare(a: str, b: str) -> int:
    return _cmp(pep440_key(a), pep440_key(b))


SEMVER_RE = re.compile(r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")


GO_TOOLCHAIN_RE = re.compile(r"go(\d+)\.(\d+)(?:\.(\d+))?(?:(rc|beta)(\d+))?")


def _semver_key(version: str) -> tuple[tuple[int, int, int], list[str] | None]:
    toolchain = GO_TOOLCHAIN_RE.fullmatch(version)
    if toolchain:  # Go's own versions: go1.21 (= 1.21.0), go1.21.3, go1.21rc2 (a pre-release of 1.21.0)
        major, minor, patch, pre, number = toolchain.groups()
        version = f"{major}.{minor}.{patch or 0}" + (f"-{pre}.{number}" if pre else "")
    match = SEMVER_RE.fullmatch(version)
    if not match:
        raise BadVersion(version)
    major, minor, patch, pre = match.groups()
    return (int(major), int(minor), int(patch)), pre.split(".") if pre else None


def semver_compare(a: str, b: str) -> int:
    (ca, pa), (cb, pb) = _semver_key(a), _semver_key(b)
    if ca != cb:
        return _cmp(ca, cb)
    if pa is None or pb is None:
        return _cmp(pa is None, pb is None)
    for x, y in zip(pa, pb):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return _cmp(int(x), int(y))
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1
        return _cmp(x, y)
    return _cmp(len(pa), len(pb))


COMPARATORS: dict[str, Callable[[str, str], int]] = {
    "dpkg": dpkg_compare, "rpm": rpm_compare, "apk": apk_compare, "pep440": pep440_compare, "semver": semver_compare,
}


def sort_key(kind: str) -> Callable[[str], object]:
    return functools.cmp_to_key(COMPARATORS[kind])
