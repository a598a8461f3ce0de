"""Fixtures of the virtualbox driver's tests: Vagrant with its libvirt provider under QEMU software emulation.

VirtualBox is not packaged for Debian 12, so the same driver runs with ``--virtualbox-provider libvirt``. Nothing is
installed here (scripts/setup.sh does it); the session starts virtlogd and libvirtd by hand (PID 1 is not systemd)
and stops them by PID at the end, after removing every domain, volume and network the tests made, pass or fail.
The test box is built once by scripts/vagrant-box.sh and cached in /var/cache/machines-test, keyed by the script's
hash, so only the first run (or a changed script) pays for debootstrap.
"""

from __future__ import annotations

import fcntl
import grp
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BOX_SCRIPT = REPO / "scripts" / "vagrant-box.sh"
CACHE = Path(os.environ.get("MACHINES_TEST_CACHE", "/var/cache/machines-test"))
VAGRANT_HOME = CACHE / "vagrant.d"
LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")
DAEMONS = {"virtlogd": Path("/run/virtlogd.pid"), "libvirtd": Path("/run/libvirtd.pid")}
PACKAGES = ("vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients dnsmasq-base "
            "ebtables iptables qemu-system-x86 qemu-utils debootstrap")
# The tests' own network, inside VirtualBox's allowed 192.168.56.0/21 and apart from the driver's default.
TEST_CIDR = "192.168.62.1/24"
TEST_NETWORK = "machines-192.168.62.0-24"
MACHINE_PREFIX = "vbt"


def virsh(*args: str, check: bool = True) -> str:
    result = subprocess.run(["virsh", "-q", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def domains() -> list[str]:
    return [line.strip() for line in virsh("list", "--all", "--name").splitlines() if line.strip()]


def volumes() -> list[str]:
    if virsh("pool-info", "default", check=False) == "":
        return []
    return [line.split()[0] for line in virsh("vol-list", "default").splitlines() if line.strip()]


def networks() -> list[str]:
    return [line.strip() for line in virsh("net-list", "--all", "--name").splitlines() if line.strip()]


@dataclass
class LibvirtWorld:
    """What the tests need to drive the driver against libvirt: the box's name and Vagrant's environment."""

    box: str
    env: dict[str, str]

    def leftovers(self, name: str) -> list[str]:
        """Domains, volumes and our network that a removed machine ``name`` still has in libvirt."""
        found = [f"domain {d}" for d in domains() if name in d]
        found += [f"volume {v}" for v in volumes() if name in v]
        found += [f"network {n}" for n in networks() if n == TEST_NETWORK]
        return found


def _missing_tools() -> list[str]:
    return [tool for tool in ("vagrant", "virsh", "libvirtd", "virtlogd", "debootstrap", "qemu-img",
                              "qemu-system-x86_64") if shutil.which(tool) is None]


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _start_daemons() -> list[tuple[str, int]]:
    """Start virtlogd and libvirtd unless they run; return the ones this session started, to stop them later."""
    started: list[tuple[str, int]] = []
    for daemon, pid_file in DAEMONS.items():
        if _alive(pid_file):
            continue
        subprocess.run([daemon, "-d"], check=True, timeout=60)
        deadline = time.monotonic() + 30
        while (pid := _alive(pid_file)) is None:
            assert time.monotonic() < deadline, f"{daemon} did not write {pid_file}"
            time.sleep(0.1)
        started.append((daemon, pid))
    deadline = time.monotonic() + 60
    while subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "libvirtd does not answer on qemu:///system"
        time.sleep(0.2)
    return started


def _stop(started: list[tuple[str, int]]) -> None:
    for _, pid in reversed(started):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)


def _remove_test_resources() -> None:
    """Whatever a failed test left: our machines' domains and volumes, and the tests' network."""
    for domain in domains():
        if domain.startswith(f"machines-{MACHINE_PREFIX}"):
            virsh("destroy", domain, check=False)
            virsh("undefine", domain, "--nvram", check=False)
    for volume in volumes():
        if volume.startswith(f"machines-{MACHINE_PREFIX}"):
            virsh("vol-delete", volume, "--pool", "default", check=False)
    if TEST_NETWORK in networks():
        virsh("net-destroy", TEST_NETWORK, check=False)
        virsh("net-undefine", TEST_NETWORK, check=False)


def _box(env: dict[str, str]) -> str:
    """The test box, built by scripts/vagrant-box.sh once per version of the script and added to Vagrant."""
    digest = hashlib.sha256(BOX_SCRIPT.read_bytes()).hexdigest()[:12]
    name = f"machines-test-{digest}"
    box_file = CACHE / f"{name}.box"
    if not box_file.exists():
        for stale in CACHE.glob("machines-test-*.box"):
            stale.unlink()
        started = time.monotonic()
        build = subprocess.run(["bash", str(BOX_SCRIPT), str(box_file)], capture_output=True, text=True, timeout=1200)
        assert build.returncode == 0, f"box build failed: {build.stderr[-2000:]}"
        print(f"box build: {time.monotonic() - started:.0f}s")
    for stale in (VAGRANT_HOME / "boxes").glob("machines-test-*"):
        if stale.name != name:
            shutil.rmtree(stale)
    for volume in volumes():  # vagrant-libvirt's copy of a box's disk, named after the box
        if volume.startswith("machines-test-") and not volume.startswith(f"{name}_"):
            virsh("vol-delete", volume, "--pool", "default", check=False)
    if not (VAGRANT_HOME / "boxes" / name).is_dir():
        added = subprocess.run(["vagrant", "box", "add", "--force", "--name", name, str(box_file)], env=env,
                               capture_output=True, text=True, timeout=600)
        assert added.returncode == 0, f"vagrant box add failed: {added.stderr[-2000:]}"
    return name


@pytest.fixture(scope="session")
def libvirt_world() -> Iterator[LibvirtWorld]:
    """libvirt running, the test box present, and Vagrant's environment pointing at the cached box store."""
    missing = _missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/setup.sh (apt-get install {PACKAGES})")
    CACHE.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE, 0o755)  # QEMU runs as libvirt-qemu and reads the box's kernel from here
    env = {**os.environ, "VAGRANT_HOME": str(VAGRANT_HOME), "VAGRANT_CHECKPOINT_DISABLE": "1",
           "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1"}
    kvm = os.stat("/dev/kvm") if os.path.exists("/dev/kvm") else None
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one session at a time drives this machine's libvirt
        started: list[tuple[str, int]] = []
        try:
            if kvm is not None:
                # libvirt re-probes QEMU on every call when it cannot open /dev/kvm (up takes 180 s, not 40-70 s).
                os.chown("/dev/kvm", -1, grp.getgrnam("kvm").gr_gid)
                os.chmod("/dev/kvm", 0o660)
            started = _start_daemons()
            _remove_test_resources()
            yield LibvirtWorld(box=_box(env), env=env)
        finally:
            _remove_test_resources()
            _stop(started)
            if kvm is not None:
                os.chown("/dev/kvm", -1, kvm.st_gid)
                os.chmod("/dev/kvm", kvm.st_mode & 0o7777)

