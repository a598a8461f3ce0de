"""The offline wheelhouse of the packaging test (``tests/foundation/test_packaging.py``).

That test installs our wheel into a fresh venv next to the package index's unrelated ``drivers`` and ``runtime``
distributions, whose top-level names are the folders we install as ``machines.drivers`` and ``machines.runtime``. Tests
reach no network, so ``scripts/setup.sh`` runs ``python -m tests.support.wheelhouse`` (network allowed there) to put
wheels of our dependencies and of those neighbours under ``/var/cache/machines-test/wheelhouse`` (``pip wheel``:
``runtime`` 0.1.4 is published as an sdist only, so it is built into a wheel here). The stamp file names what was
asked for, with the Python version the wheels are for: a second run with the same stamp does nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = Path("/var/cache/machines-test/wheelhouse")
STAMP = WHEELHOUSE / "requirements.txt"
# The index's distributions that own our folders' names as top-level packages: drivers 0.1.0 installs the package
# ``drivers``, runtime 0.1.4 the module ``runtime``. That runtime imports greenlet without declaring it (on Python 3 its
# other fallbacks are Python 2 modules), so greenlet comes along for ``import runtime`` to work.
NEIGHBOURS = ("drivers==0.1.0", "runtime==0.1.4", "greenlet")


def requirements() -> list[str]:
    """Our runtime dependencies as pyproject.toml declares them, then the neighbours."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *NEIGHBOURS]


def _stamp() -> str:
    return f"# wheels for python {sys.version_info.major}.{sys.version_info.minor}\n" + "\n".join(requirements()) + "\n"


def build() -> None:
    """Fill the wheelhouse from the package index unless it already holds what the stamp names."""
    stamp = _stamp()
    if STAMP.is_file() and STAMP.read_text() == stamp:
        return
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(WHEELHOUSE), *requirements()],
                   check=True)
    temporary = STAMP.with_suffix(".new")
    temporary.write_text(stamp)
    temporary.replace(STAMP)  # last, so an interrupted run is redone next time


def wheelhouse() -> Path:
    """The filled wheelhouse, or the calling test fails saying how to fill it (never a skip)."""
    if not STAMP.is_file() or STAMP.read_text() != _stamp():
        pytest.fail(f"the offline wheelhouse {WHEELHOUSE} is missing or older than pyproject.toml: run scripts/setup.sh",
                    pytrace=False)
    return WHEELHOUSE


if __name__ == "__main__":
    build()
