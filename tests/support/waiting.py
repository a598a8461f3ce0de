"""Bounded waits for a state, shared by every area: a test waits for something to converge, never times it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def poll(what: str, predicate: Callable[[], T], limit: float = 30.0, interval: float = 0.05) -> T:
    """Call ``predicate`` until it returns something true and return that; after ``limit`` seconds fail the test
    naming the state it never reached and the last value seen."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"never reached within {limit:g}s: {what} (last: {value!r})")
        time.sleep(interval)
