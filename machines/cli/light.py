"""Commands answered without Typer: what needs neither the store nor the command tree (``machines version``).

Only an exact command line is answered here; anything else (a machine name, an option, ``--help``, a shell's TAB)
goes through the Typer application, which holds the same commands with their help and completion.
"""

from __future__ import annotations

import sys

from machines import __version__, completion


def version_line() -> str:
    """What ``machines version`` prints."""
    return f"machines version {__version__}"


def answered(args: list[str]) -> bool:
    """Answer ``args`` when it is a light command; whether it was."""
    if args != ["version"] or completion.requested():
        return False
    sys.stdout.write(version_line() + "\n")
    return True
