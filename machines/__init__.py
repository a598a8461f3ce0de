"""machines: create container hosts anywhere and run containers on them.

The library is the product; the ``machines`` command line is a thin layer over it::

    from machines import Machines
    machine = Machines().create("web", "local")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Machine", "Machines", "__version__"]


def __getattr__(name: str) -> Any:
    """``Machines`` and ``Machine`` load on first use, so ``machines.errors`` stays importable by drivers cheaply.

    ``Machines`` is the one with the default provisioner (``machines.default``).
    """
    if name == "Machines":
        from machines import default

        return default.Machines
    if name == "Machine":
        from machines import machine

        return machine.Machine
    raise AttributeError(f"module 'machines' has no attribute {name!r}")
