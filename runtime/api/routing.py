"""The one route table every area module registers into, plus query helpers they share."""

from __future__ import annotations

from machines.runtime import timefmt
from machines.runtime.api.server import Request, Router
from machines.runtime.filters import Args

ROUTER = Router()
route = ROUTER.add


def filters_arg(request: Request) -> Args:
    """The ``filters`` query parameter (either wire form); each backend validates the keys it accepts."""
    return Args.from_json(request.arg("filters"))


def timestamp_arg(request: Request, name: str) -> float:
    """``since``/``until`` of logs and events: moby's ``timetypes.ParseTimestamps`` (``seconds[.fraction]``, the
    docker CLI converts durations and dates before sending)."""
    text = request.arg(name)
    if not text:
        return 0
    seconds, nanoseconds = timefmt.parse_timestamp(text)
    return seconds + nanoseconds / 1e9
