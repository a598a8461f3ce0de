"""Version ordering of each ecosystem, as its own tools define it (never plain string or tuple order).

dpkg: dpkg's ``verrevcmp`` and ``parseversion`` (epoch, upstream, revision; ``~`` sorts before everything, even the
end). rpm: ``rpmvercmp`` with ``~`` (before) and ``^`` (after), epochs and releases as ``rpmverCmp``. apk: apk-tools'
token comparison (``_alpha`` < ``_beta`` < ``_pre`` < ``_rc`` < no suffix < ``_cvs`` < ``_svn`` < ``_git`` < ``_hg``
< ``_p``, ``~hash``, then ``-rN``). PyPI: PEP 440, here in the standard library (the runtime scans images on arrival
and may use nothing else) with ``packaging``'s grammar and sort key. npm and Go: Semantic Versioning 2.0 (Go's ``v``
prefix and ``go1.21`` toolchain names accepted). tests/scan/test_versions.py runs each tool's own test cases.

Standard library only, Python 3.9: the runtime and ``machines scan`` share this module.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
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


DPKG_UPSTREAM_RE = re.compile(r"[0-9][A-Za-z0-9.+~:-]*")
DPKG_REVISION_RE = re.compile(r"[A-Za-z0-9.+~]*")


def _dpkg_split(version: str) -> tuple[int, str, str]:
    """dpkg's ``parseversion``: blanks around are trimmed; an empty part, an epoch that is not a number (or above
    INT_MAX), an upstream version not starting with a digit or a character outside each part's set is refused."""
    version = version.strip(" \t")
    epoch, colon, rest = version.partition(":")
    if not colon:
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    if (not epoch.isascii() or not epoch.isdigit() or int(epoch) > 2**31 - 1 or (dash and not revision)
            or not DPKG_UPSTREAM_RE.fullmatch(upstream) or not DPKG_REVISION_RE.fullmatch(revision)):
        raise BadVersion(version)
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
    """``[EPOCH:]VERSION[-RELEASE]`` as rpm's ``rpmverCmp`` (and osv-scalibr's Red Hat order): epoch, version,
    then release, where a missing release sorts before any release."""
    ea, va, ra = _rpm_split(a)
    eb, vb, rb = _rpm_split(b)
    return _cmp(ea, eb) or rpmvercmp(va, vb) or (rpmvercmp(ra, rb) if ra and rb else _cmp(bool(ra), bool(rb)))


# --- apk -----------------------------------------------------------------------------------------------------
# apk-tools' src/version.c: a version is a stream of tokens (first number, ``.number``, one letter, ``_suffix``,
# suffix number, ``~hash``, ``-rN``) and two versions compare token by token; where the token kinds part, the
# kinds' own order decides, except that a pre-release suffix (``_alpha`` .. ``_rc``) sorts before the end. An
# invalid tail is a token of its own that sorts last, so apk orders every string and so does this.

(_APK_FIRST, _APK_DIGIT, _APK_LETTER, _APK_SUFFIX, _APK_SUFFIX_NO, _APK_HASH, _APK_REVISION, _APK_END,
 _APK_INVALID) = range(9)
APK_SUFFIXES = {"alpha": 1, "beta": 2, "pre": 3, "rc": 4, "cvs": 6, "svn": 7, "git": 8, "hg": 9, "p": 10}
_APK_NO_SUFFIX = 5
_APK_RUNS = {_APK_SUFFIX: re.compile(r"[a-z]*"), _APK_HASH: re.compile(r"[0-9a-f]*"),
             _APK_DIGIT: re.compile(r"[0-9]*")}


def _apk_tokens(version: str) -> Iterator[tuple[int, str]]:
    """(kind, text) of each token, ending with an END or INVALID token."""
    digits = _APK_RUNS[_APK_DIGIT].match(version).group()  # type: ignore[union-attr]
    kind, pos = (_APK_FIRST if digits else _APK_INVALID), len(digits)
    yield kind, digits
    while kind < _APK_END:
        if pos == len(version):
            yield _APK_END, ""
            return
        char, text = version[pos], ""
        if "a" <= char <= "z" and kind <= _APK_DIGIT:
            kind, text, pos = _APK_LETTER, char, pos + 1
        elif (char == "." and kind <= _APK_DIGIT) or (char.isascii() and char.isdigit() and kind in (
                _APK_FIRST, _APK_DIGIT, _APK_SUFFIX)):
            kind = _APK_SUFFIX_NO if kind == _APK_SUFFIX else _APK_DIGIT
            pos += char == "."
            text = _APK_RUNS[_APK_DIGIT].match(version, pos).group()  # type: ignore[union-attr]
            pos += len(text)
            kind = kind if text else _APK_INVALID
        elif (char == "_" and kind <= _APK_SUFFIX_NO) or (char == "~" and kind < _APK_HASH):
            kind = _APK_SUFFIX if char == "_" else _APK_HASH
            text = _APK_RUNS[kind].match(version, pos + 1).group()  # type: ignore[union-attr]
            pos += 1 + len(text)
            if (kind == _APK_SUFFIX and text not in APK_SUFFIXES) or not text:
                kind = _APK_INVALID
        elif version.startswith("-r", pos) and kind < _APK_REVISION:
            text = _APK_RUNS[_APK_DIGIT].match(version, pos + 2).group()  # type: ignore[union-attr]
            kind, pos = (_APK_REVISION if text else _APK_INVALID), pos + 2 + len(text)
        else:
            kind = _APK_INVALID
        yield kind, text


def _apk_token_cmp(kind: int, a: str, b: str) -> int:
    if kind == _APK_DIGIT and (a.startswith("0") or b.startswith("0")):
        return _cmp(a, b)  # a leading zero makes apk compare the digits as a string (Gentoo's rule)
    if kind in (_APK_FIRST, _APK_DIGIT, _APK_SUFFIX_NO, _APK_REVISION):
        return _cmp(int(a), int(b))
    if kind == _APK_SUFFIX:
        return _cmp(APK_SUFFIXES[a], APK_SUFFIXES[b])
    return _cmp(a, b)  # the letter, the commit hash


def apk_compare(a: str, b: str) -> int:
    for (kind_a, text_a), (kind_b, text_b) in zip(_apk_tokens(a), _apk_tokens(b)):
        if kind_a != kind_b:
            if kind_a == _APK_SUFFIX and APK_SUFFIXES[text_a] < _APK_NO_SUFFIX:
                return -1
            if kind_b == _APK_SUFFIX and APK_SUFFIXES[text_b] < _APK_NO_SUFFIX:
                return 1
            return _cmp(kind_b, kind_a)  # the later kind of token is the older version
        if kind_a >= _APK_END:
            return 0
        result = _apk_token_cmp(kind_a, text_a, text_b)
        if result:
            return result
    return 0


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
