"""Docker's ``filters`` query parameter, as moby's ``api/types/filters.Args`` reads and matches it.

Every list and prune route parses it here and validates its keys against what that route accepts, so an unknown
key is refused everywhere with moby's words (``invalid filter 'x'``) and ``label``/``label!``/``until`` mean the
same on containers, images, networks and volumes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Mapping

from machines.runtime import clientjson, timefmt
from machines.runtime.errors import InvalidParameter

PRUNE_LABELS = ("label", "label!", "until")  # what every prune accepts (volume prune adds ``all``)
_PORT = re.compile(r"[0-9]{1,5}")


def invalid(key: str = "", values: Iterable[str] | None = None) -> InvalidParameter:
    """moby's ``invalidFilter`` error: ``invalid filter``, ``invalid filter 'key'``, ``invalid filter 'k=[a b]'``."""
    message = "invalid filter"
    if key:
        message += " '" + key
        if values is not None:
            message += f"=[{' '.join(values)}]"
        message += "'"
    return InvalidParameter(message)


class Args:
    """A filter set: each key maps to a set of values (moby keeps a ``map[string]map[string]bool``)."""

    def __init__(self, fields: Mapping[str, Iterable[str]] | None = None) -> None:
        self._fields: dict[str, dict[str, bool]] = {}
        for key, values in (fields or {}).items():
            self._fields[key] = {value: True for value in values}

    @classmethod
    def from_json(cls, text: str) -> Args:
        """The wire form: ``{"k": {"v": true}}``, or the legacy ``{"k": ["v"]}``; anything else is refused."""
        if not text:
            return cls()
        try:
            raw = clientjson.decode(text, "invalid filter")
        except InvalidParameter:
            raise invalid() from None
        return cls.of(raw)

    @classmethod
    def of(cls, value: None | Args | Mapping[str, object]) -> Args:
        """``value`` as Args: library callers may pass a dict in either wire form."""
        if isinstance(value, Args):
            return value
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise invalid()
        args = cls()
        for key, values in value.items():
            if isinstance(values, Mapping) and all(isinstance(v, bool) for v in values.values()):
                args._fields[str(key)] = {str(item): bool(on) for item, on in values.items()}
            elif isinstance(values, list) and all(isinstance(v, str) for v in values):
                args._fields[str(key)] = {item: True for item in values}
            elif isinstance(values, str):  # docker-py sends a lone string for a single value
                args._fields[str(key)] = {values: True}
            else:
                raise invalid()
        return args

    def __len__(self) -> int:
        return len(self._fields)

    def __bool__(self) -> bool:
        return bool(self._fields)

    def contains(self, key: str) -> bool:
        return key in self._fields

    def get(self, key: str) -> list[str]:
        """The values of ``key`` (sorted, so results do not depend on the order a client sent them)."""
        return sorted(self._fields.get(key, {}))

    def add(self, key: str, value: str) -> None:
        self._fields.setdefault(key, {})[value] = True

    def validate(self, accepted: Iterable[str]) -> Args:
        """Refuse a key outside ``accepted`` with moby's message; returns self for chaining."""
        allowed = set(accepted)
        for key in sorted(self._fields):
            if key not in allowed:
                raise invalid(key)
        return self

    def exact_match(self, key: str, source: str) -> bool:
        """True without values for ``key``, else when ``source`` is one of them."""
        values = self._fields.get(key)
        return not values or values.get(source, False)

    def fuzzy_match(self, key: str, source: str) -> bool:
        """``exact_match``, or ``source`` starts with one of the values (ids by prefix)."""
        if self.exact_match(key, source):
            return True
        return any(source.startswith(prefix) for prefix in self._fields.get(key, {}))

    def match(self, key: str, source: str) -> bool:
        """``exact_match``, or one of the values as a regular expression found in ``source`` (names);
        a value that is no valid expression matches nothing, as in moby."""
        if self.exact_match(key, source):
            return True
        for pattern in self._fields.get(key, {}):
            try:
                if re.search(pattern, source):
                    return True
            except re.error:
                continue
        return False

    def match_kv_list(self, key: str, sources: Mapping[str, str] | None) -> bool:
        """Every ``k`` or ``k=v`` value of ``key`` is in ``sources`` (true without values)."""
        values = self._fields.get(key)
        if not values:
            return True
        if not sources:
            return False
        for spec in values:
            name, has_value, wanted = spec.partition("=")
            if name not in sources or (has_value and sources[name] != wanted):
                return False
        return True

    def match_labels(self, labels: Mapping[str, str] | None) -> bool:
        """``label`` all present and, when given, not all of ``label!`` present (moby's prune ``matchLabels``)."""
        if not self.match_kv_list("label", labels):
            return False
        return not (self.contains("label!") and self.match_kv_list("label!", labels))

    def get_bool(self, key: str, default: bool) -> bool:
        """A boolean filter (``true``/``false``/``1``/``0``); refused when empty, other or conflicting."""
        values = self._fields.get(key)
        if values is None:
            return default
        if not values:
            raise invalid(key)
        is_false = values.get("0", False) or values.get("false", False)
        is_true = values.get("1", False) or values.get("true", False)
        if is_false == is_true:
            raise invalid(key, self.get(key))
        return is_true

    def until(self, reference: float | None = None) -> float | None:
        """The one ``until`` value (a Go duration back from now, a date or time, unix seconds) as unix seconds."""
        values = self.get("until")
        if not values:
            return None
        if len(values) > 1:
            raise InvalidParameter("more than one until filter specified")
        return timefmt.moment(values[0], time.time() if reference is None else reference)

    def ports(self, key: str) -> set[str]:
        """``publish``/``expose`` values (``80``, ``80/udp``, ``8000-8010/tcp``) as ``port/proto`` keys, as moby's
        ``portOp`` reads them."""
        out: set[str] = set()
        for value in self.get(key):
            if ":" in value:
                raise InvalidParameter(f"filter for '{key}' should not contain ':': {value}")
            port, _, proto = value.partition("/")
            start, _, end = port.partition("-")
            if not _PORT.fullmatch(start) or (end and not _PORT.fullmatch(end)) or int(end or start) < int(start):
                raise InvalidParameter(f"error while looking up for {key} {value}: invalid port range: {port}")
            out.update(f"{number}/{proto or 'tcp'}" for number in range(int(start), int(end or start) + 1))
        return out

    def items(self) -> Iterator[tuple]:
        for key in sorted(self._fields):
            yield key, self.get(key)
