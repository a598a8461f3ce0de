"""Secrets never reach a log line, ``--debug`` included: a logging filter that blanks them out of every record.

With ``--debug`` the SDKs log what they send: botocore its request parameters and headers (``Authorization``,
``X-Amz-Security-Token``, ``UserData``, which carries the host's private key through cloud-init), azure-identity and
urllib3 token requests (``client_secret``), request bodies (``customData``, ``adminPassword``). The filter replaces
the value of every such field, in the forms these libraries print (``Name: value`` headers, ``'Name': b'value'``
reprs, JSON, ``name=value`` query and form strings), any PEM private key block and any Swarm join token
(``SWMTKN-1-...``), with ``REDACTED``.
"""

from __future__ import annotations

import logging
import re

REDACTED = "REDACTED"

_NAMES = (
    r"authorization|proxy-authorization|x-amz-security-token|x-amz-signature|x-amz-credential|"
    r"(?:aws[-_]?)?(?:session|security)[-_]?token|(?:aws[-_]?)?secret[-_]?access[-_]?key|client[-_]?secret|"
    r"client[-_]?assertion|(?:access|refresh|id)[-_]?token|admin[-_]?password|password|passphrase|"
    r"user[-_]?data|custom[-_]?data|private[-_]?key|account[-_]?key|shared[-_]?key|signature|sig"
)
# The name (not the end of a longer word), an optional closing quote, then ':' or '=' and the value: quoted (as in
# reprs and JSON, b'' too), or bare up to a separator (headers and query strings; a header keeps its spaces).
_FIELD = re.compile(
    rf"""(?<![\w-])(?P<name>{_NAMES})(?P<sep>['"]?\s*[:=]\s*(?:b(?=['"]))?)"""
    r"""(?:(?P<quote>['"])(?:\\.|(?!(?P=quote)).)*(?P=quote)|(?P<bare>[^\s'",&;}\]\\]+(?:[ ][^\s'",&;}\]\\=]+(?=[\s,'"]|$))*))""",
    re.IGNORECASE,
)
_SWARM_TOKEN = re.compile(r"SWMTKN-1-[0-9A-Za-z-]+")  # Swarm mode join tokens, wherever they appear
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.DOTALL)


def _field(match: re.Match[str]) -> str:
    quote = match.group("quote") or ""
    return f"{match.group('name')}{match.group('sep')}{quote}{REDACTED}{quote}"


def redact(text: str) -> str:
    """``text`` with the value of every secret field and every private key replaced by ``REDACTED``."""
    text = _PEM.sub(lambda match: f"-----BEGIN {match.group(1)}PRIVATE KEY----- {REDACTED}", text)
    text = _SWARM_TOKEN.sub(REDACTED, text)
    return _FIELD.sub(_field, text)


class RedactSecrets(logging.Filter):
    """Rewrites each record's message (and its traceback text) with ``redact`` before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of ``logger`` (the root by default), where all libraries' records end."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(existing, RedactSecrets) for existing in handler.filters):
            handler.addFilter(RedactSecrets())
