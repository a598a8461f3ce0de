"""Tests of the local driver and its isolated hosts."""
