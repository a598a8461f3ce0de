"""The virtualbox driver against what real Vagrant and VirtualBox answer, through stand-ins on PATH (tests/virtualbox/
stub): this host has no VirtualBox. The stub ``vagrant`` speaks Vagrant 2.3's formats and error texts."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from machines.drivers.base import Ledger, State
from machines.drivers.virtualbox import VirtualBoxDriver
from machines.errors import DriverError, PreCreateError
from machines.store import Store, new_record
from tests.support.cli import machines

STUB = Path(__file__).with_name("stub")


@pytest.fixture
def stub_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The stand-ins first on PATH, their shared state in this test's folder, and no VirtualBox VMs yet."""
    env = {"PATH": f"{STUB}:{os.environ['PATH']}", "STUB_VAGRANT_STATE": str(tmp_path / "stub-state"),
           "STUB_VBOX_VMS": ""}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("STUB_VIRTUALBOX_VERSION", raising=False)
    monkeypatch.delenv("STUB_VAGRANT_VM_STATE", raising=False)
    yield env


def nat_driver(store: Path, name: str) -> VirtualBoxDriver:
    """A NAT machine's driver whose folder holds its key and a record the next machine's driver can read."""
    folder = store / "machines" / name
    folder.mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "id_ed25519")], check=True)
    return VirtualBoxDriver(name, str(folder), {**VirtualBoxDriver.flag_defaults(), "nat": True})


def save(driver: VirtualBoxDriver) -> None:
    """Write the machine's record as the core does after create, so the next machine's driver sees its ports."""
    record = new_record(driver.machine_name, "virtualbox", driver.flag_values, {})
    record["driver_state"] = driver.discovered
    Store(Path(driver.store_dir).parent.parent).save(driver.machine_name, record)


def test_unsupported_virtualbox_shows_vagrants_own_reason(stub_path: dict[str, str], tmp_path: Path) -> None:
    """Debian 12's Vagrant 2.3 with VirtualBox 7.1: create stops at once, with Vagrant's words, one line, exit 3."""
    env = {**os.environ, **stub_path, "STUB_VIRTUALBOX_VERSION": "7.1.4"}
    result = machines(tmp_path / "store", "create", "-d", "virtualbox", "vb1", env=env, check=False)
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert ("Vagrant cannot use the virtualbox provider: Vagrant has detected that you have a version of VirtualBox "
            "installed that is not supported by this version of Vagrant.") in lines[0]
    assert "4.0, 4.1, 4.2, 4.3, 5.0, 5.1, 5.2, 6.0, 6.1, 7.0" in lines[0]
    assert not (tmp_path / "store" / "machines" / "vb1").exists()


def test_two_nat_machines_get_the_ports_vagrant_chose(stub_path: dict[str, str], tmp_path: Path) -> None:
    """Vagrant moves the second machine's forwards off 2222/2376: its URL and SSH details follow them."""
    first, second = nat_driver(tmp_path, "nat1"), nat_driver(tmp_path, "nat2")
    for driver in (first, second):
        driver.pre_create_check()
        driver.create(Ledger())
        save(driver)
    assert first.url() == "tcp://127.0.0.1:2376" and first.ssh_details().port == 2222
    assert second.url() != first.url() and second.url().startswith("tcp://127.0.0.1:22")
    assert second.ssh_details().port not in (2222, int(second.url().rsplit(":", 1)[1]))
    for driver in (first, second):
        driver.remove()
        assert driver.state() is State.NOT_FOUND


def test_nat_port_another_machine_holds_is_refused(stub_path: dict[str, str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Without auto_correct (or after a restart in another order) Vagrant may hand out a port a stopped machine
    records: refused, naming that machine, rather than two machines silently sharing 127.0.0.1:2376."""
    monkeypatch.setenv("STUB_VAGRANT_NO_AUTOCORRECT", "1")
    first, second = nat_driver(tmp_path, "nat1"), nat_driver(tmp_path, "nat2")
    first.create(Ledger())
    save(first)
    first.stop()
    ledger = Ledger()
    with pytest.raises(DriverError, match="Vagrant forwarded 127.0.0.1:2376 to machines-nat2, but machine nat1 uses"):
        second.create(ledger)
    assert ledger.rollback() == [] and second.state() is State.NOT_FOUND
    first.remove()


@pytest.mark.parametrize(("raw", "state"), [("paused", State.PAUSED), ("stuck", State.ERROR),
                                            ("saving", State.STOPPING), ("aborted", State.STOPPED),
                                            ("saved", State.STOPPED), ("gurumeditation", State.ERROR)])
def test_virtualbox_states_are_mapped(stub_path: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      raw: str, state: State) -> None:
    driver = nat_driver(tmp_path, "st")
    driver.create(Ledger())
    monkeypatch.setenv("STUB_VAGRANT_VM_STATE", raw)
    assert driver.state() is state
    monkeypatch.delenv("STUB_VAGRANT_VM_STATE")
    driver.remove()


def test_disk_size_the_virtualbox_provider_cannot_apply_is_refused(stub_path: dict[str, str], tmp_path: Path) -> None:
    driver = VirtualBoxDriver("d", str(tmp_path / "d"), {**VirtualBoxDriver.flag_defaults(), "disk_size": 40000})
    with pytest.raises(PreCreateError, match="--virtualbox-disk-size cannot be applied by the virtualbox provider"):
        driver.pre_create_check()


def test_disk_below_the_box_size_is_refused_for_libvirt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vagrant-libvirt would silently keep the box's larger disk ("Ignoring requested virtual disk size")."""
    box = tmp_path / "vagrant.d" / "boxes" / "acme-VAGRANTSLASH-big" / "1.0" / "libvirt"
    box.mkdir(parents=True)
    (box / "metadata.json").write_text(json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": 40}))
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "vagrant.d"))
    driver = VirtualBoxDriver("d", str(tmp_path / "d"), {**VirtualBoxDriver.flag_defaults(), "provider": "libvirt",
                                                         "box": "acme/big", "disk_size": 20000})
    with pytest.raises(PreCreateError, match="--virtualbox-disk-size 20000 is below the 40 GB disk of box acme/big"):
        driver._check_disk_fits_box()
    driver.config["disk_size"] = 40960
    driver._check_disk_fits_box()


def test_leftover_vm_of_the_same_name_is_found_before_create(stub_path: dict[str, str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUB_VBOX_VMS", "other,machines-old")
    driver = VirtualBoxDriver("old", str(tmp_path / "old"), VirtualBoxDriver.flag_defaults())
    with pytest.raises(PreCreateError, match="a VM named machines-old already exists in virtualbox .*"
                                             "VBoxManage unregistervm machines-old --delete"):
        driver.pre_create_check()
    assert not (tmp_path / "old").exists()


@contextlib.contextmanager
def running(tmp_path: Path, name: str) -> Iterator[VirtualBoxDriver]:
    """A NAT machine up in the stand-in Vagrant, destroyed afterwards whatever the test did."""
    driver = nat_driver(tmp_path, name)
    driver.create(Ledger())
    try:
        yield driver
    finally:
        driver.remove()


def hardware(driver: VirtualBoxDriver) -> dict[str, int]:
    """What the stand-in VirtualBox gave the VM at its last boot."""
    return json.loads(Path(driver.store_dir, ".vagrant-stub.json").read_text())["hardware"]


def test_set_resizes_a_running_vm_with_a_reload(stub_path: dict[str, str], tmp_path: Path) -> None:
    """CPUs, memory and a larger disk reach the VM through the Vagrantfile and `vagrant reload`."""
    with running(tmp_path, "rs") as driver:
        assert hardware(driver) == {"memory": 1024, "cpus": 1}
        driver.change({"memory": 2048, "cpu_count": 2, "disk_size": 30000})
        assert hardware(driver) == {"memory": 2048, "cpus": 2, "disk_mb": 30000}
        assert driver.state() is State.RUNNING and driver.url() == "tcp://127.0.0.1:2376"
        driver.flag_values.update({"memory": 2048, "cpu_count": 2, "disk_size": 30000})  # as `machines set` records
        with pytest.raises(DriverError, match="--virtualbox-disk-size 20000 is not larger than the disk's 30000 MB: "
                                              "VirtualBox can only grow a disk"):
            driver.change({"disk_size": 20000})
        assert hardware(driver)["disk_mb"] == 30000


def test_set_on_a_stopped_vm_applies_at_the_next_start(stub_path: dict[str, str], tmp_path: Path) -> None:
    with running(tmp_path, "st2") as driver:
        driver.stop()
        driver.change({"memory": 1536})
        assert driver.state() is State.STOPPED and hardware(driver)["memory"] == 1024
        driver.flag_values["memory"] = 1536
        driver.start()
        assert hardware(driver)["memory"] == 1536


def test_set_that_virtualbox_refuses_puts_the_previous_settings_back(stub_path: dict[str, str], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """VBoxManage refuses more memory than the host has: the VM boots again as it was, and the error says so."""
    with running(tmp_path, "big") as driver:
        monkeypatch.setenv("STUB_VBOX_HOST_MEMORY", "4096")
        with pytest.raises(DriverError, match=r"vagrant reload failed for big: .*Invalid RAM size: 999999 MB .*"
                                              r"the previous settings were put back"):
            driver.change({"memory": 999999})
        assert driver.state() is State.RUNNING and hardware(driver)["memory"] == 1024
        assert "vb.memory = 1024" in Path(driver.store_dir, "Vagrantfile").read_text()
        assert driver.flag_values["memory"] == 1024


@pytest.mark.parametrize("flags,message", [
    ({"memory": 64}, "--virtualbox-memory must be a whole number of at least 128, not 64"),
    ({"cpu_count": "two"}, "--virtualbox-cpu-count must be a whole number of at least 1, not 'two'"),
    ({"box": "other/box"}, "the virtualbox driver cannot change --virtualbox-box after create"),
])
def test_set_refuses_what_vagrant_cannot_change(stub_path: dict[str, str], tmp_path: Path, flags: dict[str, object],
                                                message: str) -> None:
    with running(tmp_path, "no") as driver:
        before = Path(driver.store_dir, "Vagrantfile").read_text()
        with pytest.raises(DriverError, match=message):
            driver.change(flags)
        assert Path(driver.store_dir, "Vagrantfile").read_text() == before


def test_set_of_a_paused_vm_or_a_libvirt_disk_is_refused(stub_path: dict[str, str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with running(tmp_path, "pz") as driver:
        monkeypatch.setenv("STUB_VAGRANT_VM_STATE", "paused")
        with pytest.raises(DriverError, match="pz is paused: Vagrant changes the VM's resources when it is running"):
            driver.change({"cpu_count": 2})
        monkeypatch.delenv("STUB_VAGRANT_VM_STATE")
    libvirt = VirtualBoxDriver("lv", str(tmp_path / "lv"), {**VirtualBoxDriver.flag_defaults(), "provider": "libvirt"})
    with pytest.raises(DriverError, match="the libvirt provider sizes the disk only when it creates the VM"):
        libvirt.change({"disk_size": 40000})
