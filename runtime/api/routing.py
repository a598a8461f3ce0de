"""The one route table every area module registers into, plus query helpers they share."""

from __future__ import annotations

import json

from runtime.api.server import Request, Router
from runtime.errors import InvalidParameter

ROUTER = Router()
route = ROUTER.add


def filters_arg(request: Request) -> dict[str, list[str]] | None:
    """The ``filters`` query parameter as ``{name: [values]}``.

    Old clients send ``{"status": {"running": true}}``; moby accepts both forms, so do we.
    """
    text = request.arg("filters")
    if not text:
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        raise InvalidParameter(f"invalid filter: {text}") from None
    if not isinstance(raw, dict):
        raise InvalidParameter("invalid filter: expected a JSON object")
    result: dict[str, list[str]] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            result[key] = [item for item, enabled in value.items() if enabled]
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            result[key] = list(value)
        elif isinstance(value, str):
            result[key] = [value]
        else:
            raise InvalidParameter(f"invalid filter {key!r}: values must be strings")
    return result


def timestamp_arg(request: Request, name: str) -> float:
    """``since``/``until``: unix seconds with an optional fraction (the CLI converts durations and dates)."""
    text = request.arg(name)
    if not text:
        return 0
    try:
        return float(text)
    except ValueError:
        raise InvalidParameter(f"invalid value for {name}: {text!r} (a unix timestamp)") from None
