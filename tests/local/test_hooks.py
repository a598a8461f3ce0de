"""Issue 14: ``--provision-script`` runs as root after provisioning on any driver; its failure rolls create back;
``--cloud-config`` is refused by drivers that do not boot with cloud-init."""

from __future__ import annotations

from pathlib import Path

from machines.drivers.nshost import Bridge
from tests.support.cli import machines
from tests.support.hosts import unique_name


def test_provision_script_runs_as_root_and_its_failure_rolls_back(tmp_path: Path, test_bridge: Bridge) -> None:
    store = tmp_path / "store"
    local = ["-d", "local", "--local-bridge", test_bridge.name, "--local-subnet", test_bridge.subnet]
    good, bad = tmp_path / "good.sh", tmp_path / "bad.sh"
    good.write_text("#!/bin/sh\necho script says hello\nid -u > /root/provisioned\n")
    bad.write_text("#!/bin/sh\necho half done\necho the package is missing >&2\nexit 3\n")
    name, failed = unique_name("ps"), unique_name("pf")
    try:
        created = machines(store, "-v", "create", *local, "--provision-script", str(good), name)
        assert "script says hello" in created.stderr  # the create's log (-v shows each phase's details)
        assert machines(store, "ssh", name, "cat /root/provisioned").stdout == "0\n"
        result = machines(store, "create", *local, "--provision-script", str(bad), failed, check=False)
        assert result.returncode != 0
        assert f"{failed}: the provision script exited 3: the package is missing" in result.stderr
        assert not (store / "machines" / failed).exists()  # rolled back: no entry, no host
    finally:
        machines(store, "rm", "-f", "-y", name, check=False)


def test_hook_files_are_checked_before_anything_is_made(tmp_path: Path) -> None:
    store = tmp_path / "store"
    script = tmp_path / "s.sh"
    script.write_text("true\n")
    missing = machines(store, "create", "-d", "local", "--provision-script", str(tmp_path / "nope.sh"), "x1",
                       check=False)
    assert missing.returncode == 2 and "--provision-script" in missing.stderr and "No such file" in missing.stderr
    refused = machines(store, "create", "-d", "local", "--cloud-config", str(script), "x2", check=False)
    assert refused.returncode == 2 and "the local driver does not boot with cloud-init" in refused.stderr
    assert not (store / "machines").exists() or not any((store / "machines").iterdir())
