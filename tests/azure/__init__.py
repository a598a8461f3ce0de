"""Tests of the Azure driver."""
