""".dockerignore matching as moby/patternmatcher does it (cases from its documented behaviour)."""

from __future__ import annotations

import pytest

from machines.runtime.errors import InvalidParameter
from machines.runtime.images.ignore import Pattern, PatternMatcher, excluded, go_clean, read_patterns


@pytest.mark.parametrize("pattern, path, hit", [
    ("**", "file", True), ("**", "dir/file", True), ("**/**", "dir/file", True),
    ("dir/**", "dir/file", True), ("dir/**", "dir/dir2/file", True), ("abc/**", "abc", False),
    ("**/dir", "dir", True), ("**/dir2/*", "dir/dir2/file", True), ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**file", "file", True), ("**file", "dir/dir/file", True), ("**/file", "dir/file", True),
    ("**/file*", "dir/dir/file.txt", True), ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True), ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True), ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False), ("a/*.txt", "a/file.txt", True), ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False), ("a[b-d]e", "ace", True), ("a[^b-d]e", "aze", True), ("a[^b-d]e", "ace", False),
    (".*", ".foo", True), (".*", "foo", False), ("abc.def", "abcdef", False), ("abc.def", "abc.def", True),
    ("abc?def", "abcZdef", True), ("abc?def", "abc/def", False), ("a\\\\", "a\\", True),
    ("**/foo/bar", "foo/bar", True), ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("**/.foo", ".foo", True), ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True), ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("*", "dir/file", False), ("dir/*", "dir/sub/file", False), ("\\*x", "*x", True), ("\\*x", "ax", False),
])
def test_pattern_match(pattern, path, hit):
    assert Pattern(pattern).match(path) is hit


@pytest.mark.parametrize("patterns, path, gone", [
    (["docs"], "docs/README.md", True),                                     # a parent dir matches
    (["docs", "!docs/README.md"], "docs/README.md", False),                 # the exception wins after it
    (["docs", "!docs/README.md"], "docs/other.md", True),
    (["!docs/README.md", "docs"], "docs/README.md", True),                  # the last matching pattern wins
    (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
    (["*.md", "!README*.md", "README-secret.md"], "README.md", False),
    (["*/temp*"], "somedir/temporary.txt", True), (["*/temp*"], "temp.txt", False),
    (["*/*/temp*"], "a/b/temporary", True), (["temp?"], "temp1", True), (["temp?"], "temp/x", False),
    (["**/*.go"], "a/b/c.go", True), (["Dockerfile"], "Dockerfile", True), ([".dockerignore"], "x", False),
])
def test_matches_or_parent_matches(patterns, path, gone):
    assert excluded(path, patterns) is gone


def test_the_context_root_is_never_excluded():
    assert not excluded(".", ["**"]) and not excluded("./", ["*"])


def test_reading_the_file_as_the_docker_cli_does():
    text = "\ufeff# comment\n  # not a comment: a pattern\n\n  /abs/path/  \n!  keep/../kept \nsub//dir/./x\n!\n"
    assert read_patterns(text) == ["# not a comment: a pattern", "abs/path", "!kept", "sub/dir/x", "!"]
    assert go_clean("//a//b/") == "/a/b" and go_clean("") == "."


@pytest.mark.parametrize("patterns, message", [
    (["!"], 'illegal exclusion pattern: "!"'), (["a["], "syntax error in pattern"),
    (["[]a]"], "syntax error in pattern"), (["x\\"], "syntax error in pattern"), (["[a-]"], "syntax error"),
])
def test_bad_patterns_are_refused_as_patternmatcher_refuses_them(patterns, message):
    with pytest.raises(InvalidParameter, match=message.replace("[", "\\[")):
        PatternMatcher(patterns)
