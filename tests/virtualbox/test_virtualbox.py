"""The virtualbox driver: pre-create refusals, and a real VM end to end through Vagrant's libvirt provider.

The end-to-end test is one function on purpose: a VM under software emulation takes a minute or more to boot, so
create, ssh, docker, stop/start and rm share one machine (and one xdist worker owns libvirt).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from machines.drivers.virtualbox import VirtualBoxDriver
from machines.errors import PreCreateError
from tests.support import busybox
from tests.support.cli import DOCKER, MACHINES, machines

from .conftest import MACHINE_PREFIX, TEST_CIDR, LibvirtWorld, domains


def unique() -> str:
    return f"{MACHINE_PREFIX}{os.getpid() % 10000}{uuid.uuid4().hex[:6]}"


def refused(store: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    """Run a create that must be refused before anything is made; return its one-line error."""
    name = unique()
    result = machines(store, "create", "-d", "virtualbox", *flags, name, env=env, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert not (store / "machines" / name).exists()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1]


def test_virtualbox_provider_missing_names_the_way_out(tmp_path: Path) -> None:
    """VirtualBox is not packaged for Debian 12: the error says so and points at the libvirt provider."""
    message = refused(tmp_path, "--virtualbox-provider", "virtualbox")
    assert "VirtualBox" in message and "--virtualbox-provider libvirt" in message


def test_docker_machines_old_hostonly_default_is_refused(tmp_path: Path) -> None:
    """192.168.99.1/24 fails on VirtualBox 6.1.28+ with E_ACCESSDENIED; we refuse it before making anything."""
    assert "192.168.56.0/21" in refused(tmp_path, "--virtualbox-hostonly-cidr", "192.168.99.1/24")


@pytest.mark.parametrize(("flags", "wanted"), [
    ({"hostonly_cidr": "banana"}, "not an address/prefix"),
    ({"hostonly_cidr": "192.168.56.0/24"}, "must be a host address"),
    ({"provider": "hyperv"}, "must be one of virtualbox, libvirt"),
    ({"memory": 12}, "--virtualbox-memory"),
    ({"cpu_count": 0}, "--virtualbox-cpu-count"),
    ({"nat": True, "provider": "libvirt"}, "only applies to the virtualbox provider"),
])
def test_bad_flags_are_refused(tmp_path: Path, flags: dict[str, object], wanted: str) -> None:
    driver = VirtualBoxDriver("vb", str(tmp_path / "vb"), {**VirtualBoxDriver.flag_defaults(), **flags})
    with pytest.raises(PreCreateError, match=re.escape(wanted)):
        driver.pre_create_check()
    assert not (tmp_path / "vb").exists()


def test_missing_vagrant_names_the_package(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + ":/nonexistent"}
    assert "apt-get install vagrant" in refused(tmp_path, "--virtualbox-provider", "libvirt", env=env)


@pytest.mark.parametrize(("provider", "nat"), [("virtualbox", False), ("virtualbox", True), ("libvirt", False)])
def test_written_vagrantfile_is_valid_for_its_provider(tmp_path: Path, provider: str, nat: bool) -> None:
    """The project the driver writes passes `vagrant validate`, also on the VirtualBox paths this host cannot boot."""
    store_dir = tmp_path / "vb"
    store_dir.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(store_dir / "id_ed25519")], check=True)
    config = {**VirtualBoxDriver.flag_defaults(), "provider": provider, "nat": nat}
    driver = VirtualBoxDriver("vb", str(store_dir), config)
    driver._write_project(driver._write_host_key())
    assert (driver.config.get("ip") == "192.168.56.2") == (provider == "virtualbox" and not nat)
    for secret in ("Vagrantfile", "provision.sh", "ssh_host_ed25519_key"):
        assert (store_dir / secret).stat().st_mode & 0o077 == 0
    env = {**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_DEFAULT_PROVIDER": provider}
    # Without VirtualBox installed Vagrant can only check the Ruby and the provider-independent settings (networks).
    unusable = ["--ignore-provider"] if provider == "virtualbox" else []
    validated = subprocess.run(["vagrant", "validate", *unusable], cwd=store_dir, env=env, capture_output=True,
                               text=True, timeout=120)
    assert validated.returncode == 0, validated.stdout + validated.stderr


@pytest.mark.timeout(1500)
def test_libvirt_machine_end_to_end(libvirt_world: LibvirtWorld, tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {**libvirt_world.env, "MACHINES_STORAGE_PATH": str(store)}
    for key in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        env.pop(key, None)
    env["PATH"] = f"{Path(MACHINES).parent}:{env.get('PATH', '')}"
    name = unique()
    timings: dict[str, float] = {}

    def timed(phase: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = machines(store, *args, env=env, timeout=timeout)
        timings[phase] = round(time.monotonic() - started, 1)
        return result

    try:
        timed("create", "create", "-d", "virtualbox", "--virtualbox-provider", "libvirt",
              "--virtualbox-libvirt-driver", "qemu", "--virtualbox-box", libvirt_world.box,
              "--virtualbox-hostonly-cidr", TEST_CIDR, "--virtualbox-disk-size", "4096",
              "--timeout-ssh", "300", name, timeout=900)
        assert f"machines-{name}" in domains()
        assert machines(store, "ssh", name, "hostname", env=env).stdout.strip() == name
        # Name lookups stay in the guest: nothing it does may reach a resolver beyond this computer.
        resolv_conf = machines(store, "ssh", name, "cat /etc/resolv.conf", env=env).stdout
        assert resolv_conf.split() == ["nameserver", "127.0.0.1"]
        assert machines(store, "status", name, env=env).stdout.strip() == "Running"
        ip = machines(store, "ip", name, env=env).stdout.strip()
        assert ip.startswith("192.168.62.")

        rootfs = busybox.rootfs()
        docker = (f'eval "$(machines env {name})" && {DOCKER} import - busybox:vb >/dev/null && '
                  f'{DOCKER} run --rm busybox:vb sh -c "echo hello from \\$(hostname -s)"')
        result = subprocess.run(["bash", "-c", docker], input=rootfs, capture_output=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert result.stdout.decode().startswith("hello from")

        timed("stop", "stop", name)
        assert machines(store, "status", name, env=env).stdout.strip() == "Stopped"
        timed("start", "start", name, timeout=900)
        assert machines(store, "ssh", name, "hostname", env=env).stdout.strip() == name
        version = subprocess.run(["bash", "-c", f'eval "$(machines env {name})" && {DOCKER} images -q busybox:vb'],
                                 capture_output=True, text=True, env=env, timeout=120)
        assert version.returncode == 0 and version.stdout.strip(), version.stderr
    finally:
        timed("rm", "rm", "-f", name, timeout=600)
        print(f"virtualbox/libvirt timings (s): {timings}")
    assert libvirt_world.leftovers(name) == []
    assert not (store / "machines" / name).exists()
