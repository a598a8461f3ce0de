"""Image scanning shared by the runtime (scan on arrival) and ``machines scan``: the package inventory of layers
(``inventory``), each ecosystem's version order (``versions``), OSV matching and severities (``osv``), and the
engine's arrival policy (``arrival``). Standard library only, like the rest of the runtime."""
