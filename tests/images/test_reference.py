"""Reference normalisation must match Docker's, since tags are keyed and shown by it."""

from __future__ import annotations

import pytest

from machines.runtime.errors import InvalidParameter
from machines.runtime.images import reference

pytestmark = pytest.mark.fast  # the fast tier: no root, seconds (pytest -m fast)

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, full, familiar", [
    ("alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("alpine:3.19", "docker.io/library/alpine:3.19", "alpine:3.19"),
    ("library/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("docker.io/library/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("index.docker.io/library/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("user/app:v1", "docker.io/user/app:v1", "user/app:v1"),
    ("localhost:5000/x", "localhost:5000/x:latest", "localhost:5000/x:latest"),
    ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
    ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t"),
    ("registry.example.com/team/app", "registry.example.com/team/app:latest", "registry.example.com/team/app:latest"),
    ("alpine@" + DIGEST, "docker.io/library/alpine@" + DIGEST, "alpine@" + DIGEST),
    ("localhost:5000/x:v1@" + DIGEST, "localhost:5000/x:v1@" + DIGEST, "localhost:5000/x:v1@" + DIGEST),
    ("a__b-c/e---f.g", "docker.io/a__b-c/e---f.g:latest", "a__b-c/e---f.g:latest"),
])
def test_normalisation_table(text, full, familiar):
    assert reference.normalize(text) == full
    assert reference.familiar(text) == familiar


@pytest.mark.parametrize("text, message", [
    ("Alpine", "must be lowercase"),
    ("a" * 64, "cannot specify 64-byte hexadecimal strings"),
    ("alpine:", "invalid reference format"),
    ("alpine:bad tag", "invalid reference format"),
    ("-alpine", "invalid reference format"),
    ("alpine@sha256:abc", "invalid reference format"),
    ("a//b", "invalid reference format"),
    ("", "invalid reference format"),
])
def test_invalid_references_are_refused_with_docker_wording(text, message):
    with pytest.raises(InvalidParameter, match=message):
        reference.parse(text)


def test_tag_of_a_repo_and_registry_host():
    ref = reference.join_repo_tag("localhost:5000/x", "v2")
    assert str(ref) == "localhost:5000/x:v2" and ref.api_host == "localhost:5000"
    assert reference.parse("alpine").api_host == "registry-1.docker.io"
    assert str(reference.join_repo_tag("alpine", "")) == "docker.io/library/alpine:latest"
