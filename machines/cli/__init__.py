"""The ``machines`` command line: a thin Typer layer over the library (``machines.cli.app``).

Typer and what it loads (its pydantic adapter, click) cost about 0.15 s of CPU before any command runs, more than
``machines version`` itself takes: the commands in ``machines.cli.light`` are answered before that import.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from machines.cli import light


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (the console script passes it to ``sys.exit``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if light.answered(args):
        return 0
    from machines.cli import app

    return app.main(args)
