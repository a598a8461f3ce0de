"""GPG simple signing (``signedBy`` policies): the containers-signature format skopeo and podman write with
``--sign-by``, read from a lookaside location and verified by the host's ``gpg``.

A signature is an OpenPGP signed message (not detached) whose literal data is the simple-signing JSON with type
``atomic container signature``. Lookaside locations come from ``registries.d`` files (``<data root>/registries.d``,
then ``/etc/containers/registries.d``) as containers/image reads them: ``docker: {SCOPE: {lookaside: URL}}`` with
the most specific scope winning, else ``default-docker``; signatures are ``URL/<repo>@sha256=<hex>/signature-N``
for N = 1, 2, ... until one is missing (registries that advertise the signature extension keep them instead: see
``runtime.images.sigext``). ``file://`` and ``http(s)://`` URLs are read. Verification runs ``gpg`` in a
throw-away home holding only the policy's keys, so a VALIDSIG can only come from one of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Callable

from machines.runtime.errors import HostError
from machines.runtime.images.reference import Reference

ETC_REGISTRIES_D = "/etc/containers/registries.d"
MAX_SIGNATURES = 16
MAX_SIGNATURE = 64 << 10
GPG_TIMEOUT = 60


def parse_registries_d(text: str) -> dict:
    """The subset of YAML registries.d files use: nested ``key: value`` maps by indentation, ``#`` comments.
    Keys may hold colons (``127.0.0.1:5000:``), so a line ending in ``:`` opens a map and ``": "`` splits a value."""
    root: dict = {}
    stack: list = [(-1, root)]
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if stripped.endswith(":"):
            child: dict = {}
            parent[stripped[:-1].strip().strip("'\"")] = child
            stack.append((indent, child))
        elif ": " in stripped:
            key, _, value = stripped.partition(": ")
            parent[key.strip().strip("'\"")] = value.split(" #", 1)[0].strip().strip("'\"")
    return root


def lookaside_url(ref: Reference, folders: list[str]) -> str | None:
    """The lookaside URL for ``ref`` from the first folder's files that name one (most specific scope wins)."""
    for folder in folders:
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith((".yaml", ".yml")))
        except OSError:
            continue
        default = None
        scopes: dict = {}
        for name in names:
            try:
                with open(os.path.join(folder, name)) as f:
                    doc = parse_registries_d(f.read())
            except OSError:
                continue
            for key in ("lookaside", "sigstore"):
                default = default or (doc.get("default-docker") or {}).get(key)
            for scope, entry in (doc.get("docker") or {}).items():
                if isinstance(entry, dict) and (entry.get("lookaside") or entry.get("sigstore")):
                    scopes[scope] = entry.get("lookaside") or entry.get("sigstore")
        name = f"{ref.domain}/{ref.path}"
        while True:
            if name in scopes:
                return scopes[name]
            if "/" not in name:
                break
            name = name.rsplit("/", 1)[0]
        if default:
            return default
    return None


def signature_urls(base: str, ref: Reference, digest: str) -> list[str]:
    """``base/<repository path, without the registry host>@sha256=<hex>/signature-N``, containers/image's layout."""
    algo, _, hexpart = digest.partition(":")
    folder = f"{base.rstrip('/')}/{ref.path}@{algo}={hexpart}"
    return [f"{folder}/signature-{n}" for n in range(1, MAX_SIGNATURES + 1)]


def read_url(url: str) -> bytes | None:
    """A signature's bytes, or None once there is no such signature (which ends the numbering)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        try:
            with open(urllib.parse.unquote(parts.path), "rb") as f:
                return f.read(MAX_SIGNATURE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise HostError(f"reading signature {url}: {exc.strerror}") from None
    if parts.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - scheme checked above
                return resp.read(MAX_SIGNATURE + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise HostError(f"reading signature {url}: HTTP {exc.code}") from None
        except OSError as exc:
            raise HostError(f"reading signature {url}: {exc}") from None
    raise HostError(f"unsupported lookaside URL {url!r}: use file://, http:// or https://")


def _gpg() -> str:
    gpg = shutil.which("gpg")
    if gpg is None:
        raise HostError("GPG simple signing needs gpg (apt-get install gnupg)")
    return gpg


@contextlib.contextmanager
def throwaway_home() -> Iterator[str]:
    """A fresh GNUPGHOME (0700, short path: gpg-agent's socket name has a length limit), gone afterwards with
    any agent gpg started for it."""
    home = tempfile.mkdtemp(prefix="mgpg-", dir="/tmp")
    try:
        os.chmod(home, 0o700)
        yield home
    finally:
        if shutil.which("gpgconf"):
            subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, timeout=GPG_TIMEOUT)
        shutil.rmtree(home, ignore_errors=True)


def gpg_verify(keys: list[bytes], signature: bytes) -> bytes | None:
    """The signed payload when ``signature`` is a good signature by one of ``keys`` (OpenPGP key blobs), else
    None. HostError when gpg is missing."""
    gpg = _gpg()
    with throwaway_home() as home:
        for key in keys:
            subprocess.run([gpg, "--homedir", home, "--batch", "--quiet", "--import"], input=key,
                           capture_output=True, timeout=GPG_TIMEOUT)
        listed = subprocess.run([gpg, "--homedir", home, "--batch", "--with-colons", "--list-keys"],
                                capture_output=True, text=True, timeout=GPG_TIMEOUT).stdout
        trusted = {line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:")}
        result = subprocess.run([gpg, "--homedir", home, "--batch", "--status-fd", "2", "--output", "-",
                                 "--decrypt"], input=signature, capture_output=True, timeout=GPG_TIMEOUT)
        status = [line[9:].split() for line in result.stderr.decode(errors="replace").splitlines()
                  if line.startswith("[GNUPG:] ")]
        valid = [words for words in status if words and words[0] == "VALIDSIG"]
        bad = [words for words in status if words and words[0] in ("BADSIG", "ERRSIG", "EXPKEYSIG", "REVKEYSIG",
                                                                    "DECRYPTION_OKAY", "BEGIN_DECRYPTION")]
        if result.returncode != 0 or len(valid) != 1 or bad:
            return None
        if not {valid[0][1], valid[0][-1]} & trusted:
            return None
        return result.stdout


def gpg_sign(payload: bytes, fingerprint: str, *, secret_key: bytes | None = None,
             passphrase_file: str | None = None) -> bytes:
    """An OpenPGP signed message of ``payload`` by ``fingerprint``: from the user's own keyring, or with
    ``secret_key`` (an exported secret key) from a throw-away one. HostError with gpg's last line otherwise."""
    gpg = _gpg()
    loopback = ["--pinentry-mode", "loopback", "--passphrase-file", passphrase_file] if passphrase_file else []
    with contextlib.ExitStack() as stack:
        home = ["--homedir", stack.enter_context(throwaway_home())] if secret_key is not None else []
        if secret_key is not None:
            subprocess.run([gpg, *home, "--batch", "--quiet", *loopback, "--import"], input=secret_key,
                           capture_output=True, timeout=GPG_TIMEOUT)
        result = subprocess.run([gpg, *home, "--batch", *loopback, "--sign", "--local-user", fingerprint,
                                 "--output", "-"], input=payload, capture_output=True, timeout=GPG_TIMEOUT)
    if result.returncode != 0 or not result.stdout:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise HostError(f"gpg could not sign with {fingerprint}: {detail[-1] if detail else 'failed'}")
    return result.stdout


def write_signature(folder: str, ref: Reference, digest: str, signature: bytes) -> str:
    """Store ``signature`` as the next free ``signature-N`` under the lookaside folder (a registries.d
    ``lookaside-staging``); returns its path."""
    base = "file://" + urllib.parse.quote(os.path.abspath(folder))
    for url in signature_urls(base, ref, digest):
        path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        except OSError as exc:
            raise HostError(f"writing signature {path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(signature)
        return path
    raise HostError(f"{ref.familiar()} already has {MAX_SIGNATURES} signatures in {folder}")


def lookaside_signatures(base: str, ref: Reference, digest: str) -> Iterator[bytes]:
    """The signatures under the lookaside URL ``base``: ``signature-1``, ``signature-2``, ... until one is missing."""
    for url in signature_urls(base, ref, digest):
        blob = read_url(url)
        if blob is None:
            return
        yield blob


def verify_signed_by(keys: list[bytes], signatures: Iterable[bytes],
                     check: Callable[[bytes], str | None]) -> str | None:
    """None when one of ``signatures`` verifies with ``keys`` and ``check`` accepts its payload, else the reason
    (containers/image's words)."""
    reason = "A signature was required, but no signature exists"
    for blob in signatures:
        if len(blob) > MAX_SIGNATURE:
            reason = "signature is too large"
            continue
        payload = gpg_verify(keys, blob)
        if payload is None:
            reason = "Invalid GPG signature"
            continue
        problem = check(payload)
        if problem is None:
            return None
        reason = problem
    return reason
