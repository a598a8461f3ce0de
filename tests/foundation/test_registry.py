"""Drivers are found through the machines.drivers entry points; a broken one does not break the others."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest

from machines.drivers import registry
from machines.drivers.generic import GenericDriver
from machines.errors import DriverError, DriverNotFoundError

from .conftest import CliResult

pytestmark = pytest.mark.fast  # the fast tier: no root, seconds (pytest -m fast)


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party package on sys.path declaring a working driver and one whose module cannot import."""
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "thirdparty_machines_driver.py").write_text(
        "from machines.drivers.base import Driver, Flag\n"
        "class CloudDriver(Driver):\n"
        "    name = 'tpcloud'\n"
        "    flags = [Flag('region', 'where to make hosts', envvar='TPCLOUD_REGION')]\n"
    )
    dist_info = package / "thirdparty_machines_driver-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-machines-driver\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[machines.drivers]\n"
        "tpcloud = thirdparty_machines_driver:CloudDriver\n"
        "tpbroken = thirdparty_machines_driver_missing_dependency:Driver\n"
    )
    monkeypatch.syspath_prepend(str(package))
    importlib.invalidate_caches()


def test_entry_point_drivers_are_found(plugins: None) -> None:
    assert registry.get("generic") is GenericDriver
    assert registry.get("tpcloud").name == "tpcloud"
    assert {"generic", "tpcloud", "tpbroken"} <= set(registry.names())


def test_a_broken_driver_only_fails_when_asked_for(plugins: None) -> None:
    available = registry.available()
    assert "tpcloud" in available and "generic" in available and "tpbroken" not in available
    with pytest.raises(DriverError, match="driver 'tpbroken' is installed but cannot be loaded: No module named"):
        registry.get("tpbroken")


def test_unknown_driver_lists_the_installed_ones(plugins: None) -> None:
    with pytest.raises(DriverNotFoundError) as caught:
        registry.get("hyperv")
    message = str(caught.value)
    assert message.startswith("unknown driver 'hyperv'; installed drivers: ")
    assert "generic" in message and "tpcloud" in message and "tpbroken" not in message


def test_plugin_flags_appear_in_create_help(plugins: None, cli: Callable[..., CliResult]) -> None:
    result = cli("create", "--help")
    assert "--tpcloud-region" in result.stdout and "TPCLOUD_REGION" in result.stdout
