"""What every command module shares: global options, the library object, progress, per-machine results."""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from machines import inventory, redaction
from machines.default import Machines
from machines.errors import ExitStatus, MachinesError, UsageError
from machines.machine import run_concurrently
from machines.progress import Progress, ProgressDisplay, escape

if TYPE_CHECKING:  # rich loads only when a command prints through it: `machines version` and `ip` stay fast
    from rich.console import Console

T = TypeVar("T")


@dataclasses.dataclass
class Settings:
    """Global options, set by the app callback before any command runs."""

    storage_path: Path | None = None
    debug: bool = False
    verbose: bool = False


settings = Settings()


@functools.cache
def err_console() -> Console:
    """The stderr console every command shares (made on first use: rich is slow to import)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def machines() -> Machines:
    return Machines(settings.storage_path)


def display() -> ProgressDisplay:
    return ProgressDisplay(err_console(), verbose=settings.verbose or settings.debug)


def error_line(message: str) -> None:
    """The one-line error format of every command."""
    err_console().print(f"[red]Error:[/red] {escape(message)}")


def exit_status_of(error: BaseException) -> int:
    if isinstance(error, MachinesError):
        return int(error.exit_status)
    if isinstance(error, KeyboardInterrupt):
        return int(ExitStatus.INTERRUPTED)
    return int(ExitStatus.ERROR)


FilterOption = Annotated[
    list[str] | None,
    typer.Option("--filter", help="Act on the machines 'ls --filter' selects: label=KEY=VALUE, driver=, state=, "
                                  "name= (regex), swarm=NAME; repeatable. One result line per machine."),
]


def selected(names: list[str] | None, filters: list[str] | None) -> list[str]:
    """The machines a fleet command acts on: the names given, or those ``--filter`` selects (never both)."""
    if filters and names:
        raise UsageError("give machine names or --filter, not both")
    if filters:
        chosen = inventory.select(machines().list(), filters)
        if not chosen:
            err_console().print(f"No machine matches {' '.join('--filter ' + spec for spec in filters)}")
        return chosen
    if not names:
        raise UsageError("give machine names, or --filter to select them")
    return list(dict.fromkeys(names))


def for_each_machine(
    names: list[str],
    action: Callable[[str, Progress], T],
    *,
    cancelled: threading.Event | None = None,
    report: bool = False,
) -> dict[str, T]:
    """Run ``action`` on every named machine at once with a shared progress display; fail after all are done.

    A single failure is raised as it is (the CLI reports it); with several machines each failure gets its own line
    and the command exits with the first failure's status. ``report`` (fleet commands, ``--filter``): one line per
    machine on stdout, ``NAME: ok`` or ``NAME: error: ...``, whatever the number of machines.
    """
    shown = display()
    try:
        results = run_concurrently(names, lambda name: action(name, Progress(name if len(names) > 1 else "", shown)),
                                   cancelled=cancelled)
    finally:
        shown.close()
    failures = {name: result for name, result in results.items() if isinstance(result, BaseException)}
    if report:
        for name, result in results.items():
            echo(f"{name}: error: {result}" if isinstance(result, BaseException) else f"{name}: ok")
    else:
        if len(names) == 1 and failures:
            raise failures[names[0]]
        for name, failure in failures.items():
            error_line(f"{name}: {failure}")
    if failures:
        raise typer.Exit(exit_status_of(next(iter(failures.values()))))
    return results  # type: ignore[return-value]


def echo(text: str) -> None:
    """Plain output on stdout (what scripts read)."""
    sys.stdout.write(text + "\n")


def configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    redaction.install()  # --debug shows what the SDKs send, never the secrets in it
    if not debug:
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
