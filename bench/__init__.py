"""Benchmarks: ``python -m bench [--quick]`` runs them all and prints one table of ratios (see __main__)."""
