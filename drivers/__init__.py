"""Drivers: one base class and one module per way of getting a host (see ``drivers.base``)."""
