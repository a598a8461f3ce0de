"""Progress of long operations: named, timed phases shown on stderr while they run.

The library reports through a ``Progress`` object and never prints; the CLI gives it a ``ProgressDisplay`` (a rich
status line on stderr shared by all machines a command works on at once). Without a display a ``Progress`` only
keeps the timings, which benchmarks and reports read.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich costs ~0.1 s to import: only commands that show progress pay for it
    from rich.console import Console
    from rich.status import Status

log = logging.getLogger(__name__)


def escape(text: str) -> str:
    """``text`` shown literally in rich markup (imported here so a Progress without a display never loads rich)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


class ProgressDisplay:
    """One status line listing every phase in flight, plus one finished line per phase."""

    def __init__(self, console: Console | None = None, *, verbose: bool = False) -> None:
        if console is None:
            from rich.console import Console

            console = Console(stderr=True, highlight=False)
        self.console = console
        self.verbose = verbose
        self._active: dict[int, str] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._status: Status | None = None

    def begin(self, text: str) -> int:
        with self._lock:
            phase_id = next(self._ids)
            self._active[phase_id] = text
            self._refresh()
            return phase_id

    def end(self, phase_id: int, line: str) -> None:
        with self._lock:
            self._active.pop(phase_id, None)
            self.console.print(line)
            self._refresh()

    def print(self, line: str) -> None:
        with self._lock:
            self.console.print(line)

    def _refresh(self) -> None:
        if not self.console.is_terminal:
            return
        if not self._active:
            if self._status is not None:
                self._status.stop()
                self._status = None
            return
        text = " | ".join(self._active.values())
        if self._status is None:
            self._status = self.console.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def close(self) -> None:
        with self._lock:
            self._active.clear()
            self._refresh()


class Progress:
    """The progress of one operation on one machine (``label`` prefixes its lines)."""

    def __init__(self, label: str = "", display: ProgressDisplay | None = None) -> None:
        self.label = label
        self.display = display
        self.timings: list[tuple[str, float]] = []

    @property
    def verbose(self) -> bool:
        return bool(self.display and self.display.verbose)

    def _prefix(self) -> str:
        return f"({escape(self.label)}) " if self.label else ""

    @contextlib.contextmanager
    def phase(self, title: str) -> Iterator[None]:
        """Time a phase; it shows while running and is printed with its duration when done (or failed)."""
        log.debug("%s: %s", self.label, title)
        phase_id = self.display.begin(f"{self._prefix()}{escape(title)}...") if self.display else None
        started = time.monotonic()
        outcome = "[red]failed[/red] after "
        try:
            yield
            outcome = ""
        finally:
            elapsed = time.monotonic() - started
            self.timings.append((title, elapsed))
            if self.display and phase_id is not None:
                self.display.end(phase_id, f"{self._prefix()}{escape(title)} {outcome}[dim]{elapsed:.2f}s[/dim]")

    def note(self, message: str) -> None:
        """Something the user should see (a warning, a hint)."""
        log.info("%s: %s", self.label, message)
        if self.display:
            self.display.print(f"{self._prefix()}{escape(message)}")

    def detail(self, message: str) -> None:
        """Shown only with ``--verbose``."""
        log.debug("%s: %s", self.label, message)
        if self.display and self.display.verbose:
            self.display.print(f"[dim]{self._prefix()}{escape(message)}[/dim]")
