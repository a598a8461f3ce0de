"""JSON that came from a client: a request body, a query parameter, a header, a file inside an uploaded archive.

One decoder whose every failure is the client's mistake (``InvalidParameter``, a 400), never a crash: Python's
decoder raises ``RecursionError`` on deep nesting (``[[[[...``), which is no ``ValueError``. And small type checks
for documents whose shape we rely on (an archive's ``manifest.json``), so a wrong type is a 400 too.
"""

from __future__ import annotations

import json
from typing import Any

from machines.runtime.errors import InvalidParameter


def decode(data: bytes | str, what: str) -> Any:
    """``data`` parsed as JSON; ``what`` names it in the error (``invalid JSON``, ``invalid archive``)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise InvalidParameter(f"{what}: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidParameter(f"{what}: {exc}") from None


def json_type(value: Any) -> str:
    """JSON's name for the type of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    for kind, name in ((str, "string"), (list, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def expect_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidParameter(f"{what} must be an object, got {json_type(value)}")
    return value


def expect_strings(value: Any, what: str) -> list[str]:
    """An array of strings; ``null`` counts as empty, as Go's decoder treats a nil slice."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidParameter(f"{what} must be an array of strings, got {json_type(value)}")
    return value
