"""machines: create container hosts anywhere and run containers on them.

The library is the product; the ``machines`` command line is a thin layer over it.
"""

__version__ = "0.1.0"
