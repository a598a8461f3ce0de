"""``python -m machines``: the same as the ``machines`` command."""

from machines.cli import main

raise SystemExit(main())
