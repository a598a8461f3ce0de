"""Times as Docker writes and reads them: RFC 3339 with nanoseconds, Go durations, and moby's ``pkg/timetypes``.

One module for the whole runtime, so that ``Created`` of a container, an image, a network and a volume are written
alike, and ``until``/``since`` values mean the same on every route.
"""

from __future__ import annotations

import datetime
import re
import time

from machines.runtime.errors import InvalidParameter

_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})")
_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_GO_DURATION = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
             "h": 3600.0}
_UNIX = re.compile(r"[-+]?\d+(?:\.\d+)?")


def rfc3339_nano(ns: int | None = None) -> str:
    """Go's ``time.RFC3339Nano`` in UTC, always with 9 fraction digits as moby stores them; now by default."""
    ns = time.time_ns() if ns is None else ns
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ns // 10 ** 9))}.{ns % 10 ** 9:09d}Z"


def rfc3339(seconds: float | None = None) -> str:
    """Go's ``time.RFC3339`` in UTC (whole seconds), as moby writes a volume's ``CreatedAt``; now by default."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if seconds is None else seconds))


def parse_rfc3339(text: str) -> float:
    """Unix seconds from an RFC 3339 time (``Z`` or an offset, any fraction); ``ValueError`` otherwise."""
    found = _RFC3339.fullmatch(text.strip())
    if not found:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = found.groups()
    offset = 0
    if zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    moment = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                               tzinfo=datetime.timezone.utc)
    return moment.timestamp() - offset + (float("0." + fraction) if fraction else 0.0)


def parse_rfc3339_or(text: str | None, default: float = 0.0) -> float:
    """``parse_rfc3339`` for values we wrote ourselves: absent or unreadable ones count as ``default``."""
    try:
        return parse_rfc3339(text) if text else default
    except ValueError:
        return default


def parse_go_duration(text: str) -> float:
    """Seconds of a Go ``time.ParseDuration`` string (``1h30m``, ``1.5s``, ``-2m``, ``0``); ``ValueError``
    otherwise."""
    if text in ("0", "+0", "-0"):
        return 0.0
    if not _GO_DURATION.fullmatch(text):
        raise ValueError(f"time: invalid duration {text!r}")
    sign = -1.0 if text.startswith("-") else 1.0
    return sign * sum(float(number) * _GO_UNITS[unit] for number, unit in _GO_DURATION_PART.findall(text))


def format_go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()`` of ``ns`` nanoseconds (``1ms``, ``1.5s``, ``1m30s``), as moby's messages
    print durations."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 10 ** 9:
        for unit, size in (("ms", 1_000_000), ("\u00b5s", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim(ns / size) + unit
    hours, rest = divmod(ns, 3600 * 10 ** 9)
    minutes, rest = divmod(rest, 60 * 10 ** 9)
    text = _trim(rest / 10 ** 9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _trim(value: float) -> str:
    return (f"{value:.9f}").rstrip("0").rstrip(".")


def _local_offset(reference: float) -> datetime.timezone:
    local = datetime.datetime.fromtimestamp(reference).astimezone()
    return datetime.timezone(local.utcoffset() or datetime.timedelta(0))


_LOCAL_FORMATS = {  # moby's timetypes, by what the value contains
    "date": "%Y-%m-%d", "hour": "%Y-%m-%dT%H", "minute": "%Y-%m-%dT%H:%M", "second": "%Y-%m-%dT%H:%M:%S",
}


def get_timestamp(value: str, reference: float | None = None) -> str:
    """moby's ``timetypes.GetTimestamp``: a Go duration (back from ``reference``), an RFC 3339-like date or time
    (in the daemon's zone when it names none) or unix seconds, as the ``"seconds.nanoseconds"`` the API sends."""
    reference = time.time() if reference is None else reference
    if value != "0":
        try:
            return str(int(reference - parse_go_duration(value)))
        except ValueError:
            pass
    try:
        moment = _parse_date(value, reference)
    except ValueError:
        if "-" in value:  # an RFC 3339-like time the parser refused
            raise InvalidParameter(f'parsing time "{value}": cannot parse as an RFC 3339 time') from None
        if not _UNIX.fullmatch(value):
            raise InvalidParameter(f'failed to parse value as time or duration: "{value}"') from None
        return value
    seconds = int(moment // 1)
    return f"{seconds}.{round((moment - seconds) * 1e9):09d}"


def _parse_date(value: str, reference: float) -> float:
    has_zone = any(mark in value for mark in "zZ+") or value.count("-") == 3
    if has_zone or "." in value:
        return parse_rfc3339(value) if has_zone else _parse_local(value, reference)
    return _parse_local(value, reference)


def _parse_local(value: str, reference: float) -> float:
    head, dot, fraction = value.partition(".")
    if dot and not fraction.isdigit():
        raise ValueError(value)
    if "T" not in head:
        kind = "date"
    else:
        kind = ("hour", "minute", "second")[min(head.count(":"), 2)]
    if dot and kind != "second":
        raise ValueError(value)
    parsed = datetime.datetime.strptime(head, _LOCAL_FORMATS[kind]).replace(tzinfo=_local_offset(reference))
    return parsed.timestamp() + (float("0." + fraction) if dot else 0.0)


def parse_timestamp(value: str) -> tuple[int, int]:
    """moby's ``timetypes.ParseTimestamps``: ``"seconds[.fraction]"`` -> (seconds, nanoseconds)."""
    seconds, dot, fraction = value.partition(".")
    if not re.fullmatch(r"[-+]?\d{1,18}", seconds) or (dot and not re.fullmatch(r"\d{1,18}", fraction)):
        raise InvalidParameter(f"invalid timestamp {value!r}")
    nanoseconds = int(int(fraction) * 10 ** (9 - len(fraction))) if dot and len(fraction) <= 9 else \
        int(fraction[:9]) if dot else 0
    return int(seconds), nanoseconds


def moment(value: str, reference: float | None = None) -> float:
    """An ``until``/``since`` value (duration, date, time or unix seconds) as unix seconds."""
    seconds, nanoseconds = parse_timestamp(get_timestamp(value, reference))
    return seconds + nanoseconds / 1e9
