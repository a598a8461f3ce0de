""".dockerignore as moby reads and matches it (``moby/patternmatcher`` and its ``ignorefile``).

Clients filter the build context with these rules before they send it (the docker CLI and docker-py); the daemon
uses them for one thing only, as dockerd does: after reading the Dockerfile it deletes the Dockerfile and
``.dockerignore`` from the context when ``.dockerignore`` names them, so ``COPY . .`` does not copy them. The
matching is Go's ``filepath.Match`` plus ``**`` and ``!`` exceptions, including patternmatcher's own rules (a
leading ``**`` matches any suffix, ``dir/**`` any path below ``dir``, the last matching pattern wins, a path is
matched when it or one of its parent directories matches).
"""

from __future__ import annotations

import posixpath
import re

from machines.runtime.errors import InvalidParameter

_REGEX_ESCAPES = ".+()|{}$"
_BOM = "\ufeff"


def go_clean(path: str) -> str:
    """Go's ``filepath.Clean`` (``posixpath.normpath`` keeps a leading ``//``, Go does not)."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def read_patterns(text: str) -> list[str]:
    """``ignorefile.ReadAll``: a comment is a line starting with ``#`` (before trimming), blank lines are skipped,
    patterns are cleaned and made relative (``!`` kept in front)."""
    patterns: list[str] = []
    for number, line in enumerate(text.splitlines()):
        if number == 0 and line.startswith(_BOM):
            line = line[len(_BOM):]
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


def _check_syntax(pattern: str) -> None:
    """Go's ``filepath.Match(pattern, ".")`` error: an unclosed or empty ``[...]`` or a trailing backslash."""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 >= len(pattern):
                raise InvalidParameter("syntax error in pattern")
            i += 2
            continue
        if c == "[":
            i += 1
            if i < len(pattern) and pattern[i] == "^":
                i += 1
            ranges = 0
            while True:
                if i < len(pattern) and pattern[i] == "]" and ranges:
                    i += 1
                    break
                i = _class_char(pattern, i)
                if i < len(pattern) and pattern[i] == "-":
                    i = _class_char(pattern, i + 1)
                ranges += 1
            continue
        i += 1


def _class_char(pattern: str, i: int) -> int:
    """Go's ``getEsc``: one (possibly escaped) character of a class, which must be followed by more pattern."""
    if i >= len(pattern) or pattern[i] in "-]":
        raise InvalidParameter("syntax error in pattern")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise InvalidParameter("syntax error in pattern")
    i += 1
    if i >= len(pattern):
        raise InvalidParameter("syntax error in pattern")
    return i


class Pattern:
    """One pattern, compiled the way patternmatcher compiles it (exact, prefix, suffix or regexp match)."""

    def __init__(self, text: str) -> None:
        self.exclusion = text.startswith("!")
        self.cleaned = text[1:] if self.exclusion else text
        self.kind = "exact"
        self.regex: re.Pattern[str] | None = None
        self._compile()

    def _compile(self) -> None:
        regex, kind, pattern, i = "^", "exact", self.cleaned, 0
        position = 0
        while i < len(pattern):
            c = pattern[i]
            i += 1
            if c == "*":
                if i < len(pattern) and pattern[i] == "*":
                    i += 1
                    if i < len(pattern) and pattern[i] == "/":
                        i += 1
                    if i >= len(pattern):
                        if kind == "exact":
                            kind = "prefix"
                        else:
                            regex, kind = regex + ".*", "regexp"
                    else:
                        regex, kind = regex + "(.*/)?", "regexp"
                    if position == 0:
                        kind = "suffix"
                else:
                    regex, kind = regex + "[^/]*", "regexp"
            elif c == "?":
                regex, kind = regex + "[^/]", "regexp"
            elif c in _REGEX_ESCAPES:
                regex += "\\" + c
            elif c == "\\":
                if i < len(pattern):
                    regex, kind = regex + "\\" + pattern[i], "regexp"
                    i += 1
                else:
                    regex += "\\\\"
            elif c in "[]":
                regex, kind = regex + c, "regexp"
            else:
                regex += c
            position += 1
        self.kind = kind
        if kind == "regexp":
            try:
                self.regex = re.compile(regex + "$")
            except re.error:
                raise InvalidParameter("syntax error in pattern") from None

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.cleaned
        if self.kind == "prefix":
            return path.startswith(self.cleaned[:-2])
        if self.kind == "suffix":
            suffix = self.cleaned[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self.regex is not None
        return self.regex.match(path) is not None


class PatternMatcher:
    """``patternmatcher.New``: the patterns in order; ``!`` marks an exception to the ones before it."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns: list[Pattern] = []
        for text in patterns:
            text = text.strip()
            if not text:
                continue
            text = go_clean(text)
            if text == "!":
                raise InvalidParameter('illegal exclusion pattern: "!"')
            _check_syntax(text[1:] if text.startswith("!") else text)
            self.patterns.append(Pattern(text))

    def matches_or_parent_matches(self, path: str) -> bool:
        """Whether ``path`` (slash-separated, relative) is excluded: by itself or by one of its parent dirs."""
        matched = False
        parent = posixpath.dirname(path) or "."
        parent_dirs = parent.split("/")
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue  # an inclusion after a match, or an exception before one, changes nothing
            hit = pattern.match(path)
            if not hit and parent != ".":
                hit = any(pattern.match("/".join(parent_dirs[:n + 1])) for n in range(len(parent_dirs)))
            if hit:
                matched = not pattern.exclusion
        return matched


def excluded(path: str, patterns: list[str]) -> bool:
    """``patternmatcher.MatchesOrParentMatches``: the context root itself is never excluded."""
    path = go_clean(path)
    return path != "." and PatternMatcher(patterns).matches_or_parent_matches(path)
