"""Fixtures every area shares, loaded once as pytest plugins (no per-conftest re-imports)."""

pytest_plugins = (
    "tests.support.fixtures",
    "tests.support.busybox",
    "tests.support.debian_image",
    "tests.support.daemon",
    "tests.support.registry",
)
