"""Docker image references: parsing, normalisation and the familiar form users see.

Follows distribution/reference (``normalize.go``, ``regexp.go``) because clients send names in every form
(``alpine``, ``docker.io/library/alpine``, ``localhost:5000/x@sha256:...``) and expect one canonical key back, while
``docker images`` shows the short "familiar" name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from machines.runtime.errors import InvalidParameter

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = _ALNUM + r"(?:" + _SEPARATOR + _ALNUM + r")*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = r"(?:" + _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

# Always used with fullmatch, and ASCII as Go's regexp: "$" would let "alpine\n" by, and \w would take "é".
PATH_RE = re.compile(_PATH_COMPONENT + r"(?:/" + _PATH_COMPONENT + r")*", re.ASCII)
DOMAIN_RE = re.compile(_DOMAIN, re.ASCII)
TAG_RE = re.compile(_TAG, re.ASCII)
DIGEST_RE = re.compile(_DIGEST, re.ASCII)
ID_RE = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True)
class Reference:
    """A normalised reference: ``domain/path`` plus an optional tag and/or digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The fully qualified repository name, e.g. ``docker.io/library/alpine``."""
        return self.domain + "/" + self.path

    @property
    def familiar_name(self) -> str:
        """The repository as ``docker images`` shows it: ``alpine``, ``user/app``, ``localhost:5000/x``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        if self.path.startswith(OFFICIAL_PREFIX) and "/" not in self.path[len(OFFICIAL_PREFIX):]:
            return self.path[len(OFFICIAL_PREFIX):]
        return self.path

    def __str__(self) -> str:
        return self.name + self._suffix()

    def familiar(self) -> str:
        """Familiar name with tag/digest, e.g. ``alpine:latest``."""
        return self.familiar_name + self._suffix()

    def _suffix(self) -> str:
        out = ""
        if self.tag is not None:
            out += ":" + self.tag
        if self.digest is not None:
            out += "@" + self.digest
        return out

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` and no digest."""
        if not TAG_RE.fullmatch(tag):
            raise InvalidParameter("invalid tag format")
        return Reference(self.domain, self.path, tag, None)

    def with_default_tag(self) -> Reference:
        """Docker's TagNameOnly: add ``latest`` when neither tag nor digest was given."""
        if self.tag is None and self.digest is None:
            return Reference(self.domain, self.path, DEFAULT_TAG, None)
        return self

    @property
    def api_host(self) -> str:
        """The host that serves the registry API for this domain (Docker Hub's differs from its name)."""
        return "registry-1.docker.io" if self.domain == DEFAULT_DOMAIN else self.domain


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's splitDockerDomain: the first component is a domain only if it looks like one."""
    i = name.find("/")
    first = name[:i] if i >= 0 else ""
    if i < 0 or (not any(c in first for c in ".:") and first != "localhost" and first.lower() == first):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, name[i + 1:]
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def parse(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise ``text`` like ``docker pull``; raise InvalidParameter with Docker's wording if invalid."""
    if not isinstance(text, str) or not text:
        raise InvalidParameter("invalid reference format")
    if ID_RE.fullmatch(text):
        raise InvalidParameter(
            f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST_RE.fullmatch(digest):
            raise InvalidParameter("invalid reference format")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not TAG_RE.fullmatch(tag):
            raise InvalidParameter("invalid reference format")
    domain, path = _split_domain(rest)
    if path.lower() != path:
        raise InvalidParameter(
            f"invalid reference format: repository name ({path}) must be lowercase")
    if not DOMAIN_RE.fullmatch(domain) or not PATH_RE.fullmatch(path):
        raise InvalidParameter("invalid reference format")
    if len(domain) + 1 + len(path) > NAME_MAX:
        raise InvalidParameter("invalid reference format: repository name must not be more than 255 characters")
    ref = Reference(domain, path, tag, digest)
    return ref.with_default_tag() if default_tag else ref


def normalize(text: str) -> str:
    """``alpine`` -> ``docker.io/library/alpine:latest``."""
    return str(parse(text))


def familiar(text: str) -> str:
    """``docker.io/library/alpine:latest`` -> ``alpine:latest``."""
    return parse(text).familiar()


def join_repo_tag(repo: str, tag: str | None) -> Reference:
    """The ``repo`` + ``tag`` pair of the tag/push/pull endpoints (``tag`` may also be a digest)."""
    ref = parse(repo, default_tag=False)
    if not tag:
        return ref.with_default_tag()
    if ref.tag is not None or ref.digest is not None:
        raise InvalidParameter("invalid reference format")
    if DIGEST_RE.fullmatch(tag):
        return Reference(ref.domain, ref.path, None, tag)
    return ref.with_tag(tag)
