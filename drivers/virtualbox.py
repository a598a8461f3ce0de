"""The ``virtualbox`` driver: a local virtual machine made by Vagrant (through python-vagrant).

Why Vagrant rather than VBoxManage: Vagrant already knows boxes, NAT port forwards, host-only networks and clean
teardown, and the same Vagrantfile also runs on hosts without VirtualBox through Vagrant's libvirt provider
(``--virtualbox-provider libvirt``; VirtualBox is not packaged for Debian 12). Each machine is one Vagrant project:
the driver writes a ``Vagrantfile`` into the machine's store folder and runs ``vagrant`` there, so ``rm`` of that
folder after ``vagrant destroy`` forgets everything.

What real Vagrant and VirtualBox do that the driver copes with:

* when Vagrant cannot use the provider (VirtualBox 7.1 needs Vagrant 2.4.2 or later; Debian 12's Vagrant is 2.3),
  create stops before anything is made and shows Vagrant's own reason;
* ``--virtualbox-nat``: Vagrant moves a forwarded port that is taken (``auto_correct``), so the driver reads the
  ports it chose (``vagrant port``, ``vagrant ssh-config``) after every boot and uses them in the URL and SSH
  details, and refuses a port another machine of the store already uses;
* VirtualBox's paused, saving, saved, stuck, aborted states are mapped; a paused VM is resumed by ``start``;
* a ``--virtualbox-disk-size`` that cannot be applied (the VirtualBox provider keeps the box's disk; libvirt cannot
  shrink below the box's disk) is refused, and a VM of the same name left in the hypervisor is found before create.

Keys: the box comes with Vagrant's public insecure key. The first ``vagrant up`` runs our shell provisioner, which
puts the machine's own key in ``authorized_keys`` (root and vagrant) in place of the insecure one, and installs an
ed25519 host key this driver generated, so the core's very first SSH connection is already verified against a
pinned key (``initial_host_key``) instead of trusting whatever answers.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import vagrant

from machines.drivers.base import Driver, Flag, Ledger, SSHDetails, State
from machines.drivers.cloudinit import generate_host_key
from machines.errors import DriverError, MachinesError, PreCreateError
from machines.store import Store, atomic_write

PROVIDERS = ("virtualbox", "libvirt")
DEFAULT_BOX = "debian/bookworm64"
DEFAULT_CIDR = "192.168.56.1/24"  # VirtualBox >= 6.1.28 only allows host-only networks in 192.168.56.0/21
ALLOWED_HOSTONLY = ipaddress.IPv4Network("192.168.56.0/21")
HOST_KEY = "ssh_host_ed25519_key"
VAGRANT_LOG = "vagrant.log"
ERROR_LOG = "vagrant-error.log"
LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"
# What a host needs for each provider, for one-line pre-create errors.
PROVIDER_HINTS = {
    "virtualbox": "VirtualBox is not usable here (it is not packaged for Debian 12: install it from virtualbox.org; "
                  "VirtualBox 7.1 needs Vagrant 2.4.2 or later), or use --virtualbox-provider libvirt",
    "libvirt": "the libvirt provider is not usable: apt-get install vagrant-libvirt libvirt-daemon-system "
               "libvirt-daemon-driver-qemu dnsmasq-base, and start libvirtd",
}
# `vagrant status` states (python-vagrant normalises libvirt's shutoff/paused) to ours, as Docker Machine maps them.
STATES = {
    "running": State.RUNNING,
    "poweroff": State.STOPPED,
    "aborted": State.STOPPED,  # the VM process died: VirtualBox keeps it, `vagrant up` boots it again
    "saved": State.STOPPED,
    "shutoff": State.STOPPED,
    "paused": State.PAUSED,
    "saving": State.STOPPING,
    "restoring": State.STARTING,
    "stuck": State.ERROR,  # VirtualBox cannot tell; only a power-off helps (`machines kill`)
    "inaccessible": State.ERROR,
    "not_created": State.NOT_FOUND,
    "not created": State.NOT_FOUND,
    "gurumeditation": State.ERROR,
    "starting": State.STARTING,
    "stopping": State.STOPPING,
    "preparing": State.STARTING,
}
DEFAULT_LIBVIRT_DISK_MB = 20000
GUEST_SSH_PORT = 22
GUEST_API_PORT = 2376
# Vagrant's preamble before a provider's own reason; the reason is what the user needs.
# (matched on the text with its line breaks collapsed to single spaces)
NOT_USABLE_PREAMBLE = re.compile(r"^The provider '[^']+' that was requested to back the machine '[^']+' is reporting "
                                 r"that it isn't usable on this system\. The reason is shown below: ")

VAGRANTFILE = """\
# Written by machines for machine {name}; `vagrant` commands run in this folder act on it.
Vagrant.configure("2") do |config|
  config.vm.define {domain}
  config.vm.box = {box}
  config.vm.box_check_update = false
  config.vm.guest = :debian
  config.vm.boot_timeout = {boot_timeout}
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.ssh.insert_key = false
  insecure_key = File.join(ENV["VAGRANT_HOME"] || File.expand_path("~/.vagrant.d"), "insecure_private_key")
  config.ssh.private_key_path = [{key}, insecure_key]
  config.vm.provision "shell", name: "machines keys", inline: File.read(File.join(__dir__, "provision.sh"))
{network}
{disk}  config.vm.provider :virtualbox do |vb|
    vb.name = {domain}
    vb.memory = {memory}
    vb.cpus = {cpus}
  end
  config.vm.provider :libvirt do |lv|
    lv.default_prefix = ""
    lv.driver = {libvirt_driver}
    lv.memory = {memory}
    lv.cpus = {cpus}
    lv.machine_virtual_size = {disk_gb}
    lv.graphics_type = "none"
    lv.management_network_name = {network_name}
    lv.management_network_address = {network_address}
    lv.management_network_mode = "none"
{libvirt_cpu}  end
end
"""

# Runs once as root in the guest at the first `vagrant up`. Replaces the insecure key with the machine's own and
# installs the host key we generated; the script removes itself because it holds that private key.
PROVISION = """\
set -eu
install -d -m 0700 /root/.ssh
printf '%s\\n' {public_key} > /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
if id vagrant >/dev/null 2>&1; then
  home=$(getent passwd vagrant | cut -d: -f6)
  install -d -m 0700 -o vagrant "$home/.ssh"
  printf '%s\\n' {public_key} > "$home/.ssh/authorized_keys"
  chown vagrant "$home/.ssh/authorized_keys"; chmod 0600 "$home/.ssh/authorized_keys"
fi
umask 077
cat > /etc/ssh/ssh_host_ed25519_key <<'MACHINES_KEY'
{host_private_key}MACHINES_KEY
printf '%s\\n' {host_public_key} > /etc/ssh/ssh_host_ed25519_key.pub
printf 'HostKey /etc/ssh/ssh_host_ed25519_key\\nPermitRootLogin prohibit-password\\n' \\
  > /etc/ssh/sshd_config.d/00-machines.conf
hostname {name}; echo {name} > /etc/hostname
grep -q ' {name}$' /etc/hosts || echo '127.0.1.1 {name}' >> /etc/hosts
rm -f -- "$0"
if command -v systemctl >/dev/null 2>&1; then systemctl reload ssh || systemctl reload sshd
else kill -HUP "$(cat /run/sshd.pid)"; fi
"""


def _ruby(value: str) -> str:
    """A Ruby string literal (JSON's escaping is valid Ruby for the characters we write)."""
    return json.dumps(value)


class VirtualBoxDriver(Driver):
    """A Vagrant project per machine, with VirtualBox or (where VirtualBox is missing) libvirt underneath."""

    name = "virtualbox"
    description = "a local virtual machine made by Vagrant (VirtualBox, or libvirt with --virtualbox-provider libvirt)"
    flags = [
        Flag("memory", "memory of the VM in MB", type=int, default=1024, envvar="VIRTUALBOX_MEMORY_SIZE"),
        Flag("cpu-count", "number of virtual CPUs", type=int, default=1, envvar="VIRTUALBOX_CPU_COUNT"),
        Flag("disk-size", f"disk size in MB (libvirt provider, default {DEFAULT_LIBVIRT_DISK_MB}; the virtualbox "
             "provider keeps the box's disk and refuses the flag)", type=int, envvar="VIRTUALBOX_DISK_SIZE"),
        Flag("box", "Vagrant box (a Debian-like guest with python3)", default=DEFAULT_BOX, envvar="VIRTUALBOX_BOX"),
        Flag("provider", "Vagrant provider: virtualbox or libvirt", default="virtualbox",
             envvar="VAGRANT_DEFAULT_PROVIDER"),
        Flag("hostonly-cidr", "host-only network (libvirt: the isolated management network) as host address/prefix",
             default=DEFAULT_CIDR, envvar="VIRTUALBOX_HOSTONLY_CIDR"),
        Flag("nat", "VirtualBox only: no host-only network; SSH and the API through port forwards on 127.0.0.1",
             type=bool, default=False, envvar="VIRTUALBOX_NAT"),
        Flag("libvirt-driver", "libvirt domain type: kvm, or qemu for software emulation where KVM does not work",
             default="kvm", envvar="VAGRANT_LIBVIRT_DRIVER"),
        Flag("boot-timeout", "seconds Vagrant waits for the guest to boot", type=int, default=300,
             envvar="VIRTUALBOX_BOOT_TIMEOUT"),
    ]

    # -- helpers -------------------------------------------------------------------------------------------
    @property
    def _provider(self) -> str:
        return str(self.config.get("provider") or "virtualbox")

    @property
    def _domain(self) -> str:
        """The VM's name in the hypervisor: recognisable, and unique per machine name."""
        return f"machines-{self.machine_name}"

    def _network(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(str(self.config.get("hostonly_cidr") or DEFAULT_CIDR))

    def _vagrant(self) -> vagrant.Vagrant:
        """python-vagrant on this machine's folder; output to vagrant.log, errors kept for one-line messages."""
        environment = {**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1"}
        if self._primary_disk():  # without it Vagrant 2.3 ignores `config.vm.disk`
            features = [f for f in environment.get("VAGRANT_EXPERIMENTAL", "").split(",") if f.strip()]
            environment["VAGRANT_EXPERIMENTAL"] = ",".join(features if "disks" in features else [*features, "disks"])
        log = vagrant.make_file_cm(os.path.join(self.store_dir, VAGRANT_LOG))
        errors = vagrant.make_file_cm(os.path.join(self.store_dir, ERROR_LOG), mode="w")
        return vagrant.Vagrant(root=self.store_dir, env=environment, out_cm=log, err_cm=errors)

    def _call(self, what: str, action: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a python-vagrant call; a failure becomes one line with Vagrant's own reason."""
        if shutil.which("vagrant") is None:
            raise DriverError("the virtualbox driver needs Vagrant: apt-get install vagrant")
        try:
            return action(*args, **kwargs)
        except subprocess.CalledProcessError:
            raise DriverError(f"vagrant {what} failed for {self.machine_name}: {self._last_error()}") from None

    def _last_error(self) -> str:
        try:
            text = Path(self.store_dir, ERROR_LOG).read_text(errors="replace")
        except OSError:
            text = ""
        lines = [line.strip() for line in text.splitlines() if line.strip() and "WARNING" not in line]
        message = " ".join(lines) or f"see {os.path.join(self.store_dir, VAGRANT_LOG)}"
        return message if len(message) <= 400 else message[:397] + "..."

    def _host_public_key(self) -> str | None:
        try:
            return Path(self.store_dir, f"{HOST_KEY}.pub").read_text().strip()
        except FileNotFoundError:
            return None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def pre_create_check(self) -> None:
        provider = self._provider
        if provider not in PROVIDERS:
            raise PreCreateError(f"--virtualbox-provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
        for key, option, lowest in (("memory", "memory", 128), ("cpu_count", "cpu-count", 1),
                                    ("disk_size", "disk-size", 1024), ("boot_timeout", "boot-timeout", 10)):
            value = self.config.get(key)
            if key == "disk_size" and value is None:
                continue  # the box's own size (virtualbox) or the libvirt default
            if not isinstance(value, int) or value < lowest:
                raise PreCreateError(
                    f"--virtualbox-{option} must be a whole number of at least {lowest}, not {value!r}")
        try:
            network = self._network()
        except ValueError:
            raise PreCreateError(f"--virtualbox-hostonly-cidr {self.config.get('hostonly_cidr')!r} is not an "
                                 f"address/prefix like {DEFAULT_CIDR}") from None
        if network.ip == network.network.network_address or network.network.prefixlen > 29:
            raise PreCreateError(f"--virtualbox-hostonly-cidr {network} must be a host address in a network of "
                                 f"at least 8 addresses, like {DEFAULT_CIDR}")
        if provider == "virtualbox" and not self.config.get("nat") and not network.network.subnet_of(ALLOWED_HOSTONLY):
            raise PreCreateError(f"--virtualbox-hostonly-cidr {network} is outside {ALLOWED_HOSTONLY}, which is all "
                                 f"VirtualBox 6.1.28+ allows for host-only networks; pick one inside or use "
                                 f"--virtualbox-nat")
        if self.config.get("nat") and provider != "virtualbox":
            raise PreCreateError("--virtualbox-nat only applies to the virtualbox provider")
        if provider == "virtualbox" and self.config.get("disk_size") is not None:
            raise PreCreateError("--virtualbox-disk-size cannot be applied by the virtualbox provider (Vagrant keeps "
                                 "the box's disk); leave it out, or use --virtualbox-provider libvirt")
        if shutil.which("vagrant") is None:
            raise PreCreateError("the virtualbox driver needs Vagrant: apt-get install vagrant")
        usable, reason = _provider_usable(provider)
        if not usable:
            raise PreCreateError(f"Vagrant cannot use the {provider} provider: {reason} ({PROVIDER_HINTS[provider]})"
                                 if reason else PROVIDER_HINTS[provider])
        if provider == "libvirt" and not os.path.exists(LIBVIRT_SOCKET):
            raise PreCreateError(f"libvirtd is not running (no {LIBVIRT_SOCKET}): start it, e.g. `libvirtd -d`")
        self._check_disk_fits_box()
        self._check_no_leftover_vm()

    def _check_disk_fits_box(self) -> None:
        """vagrant-libvirt keeps the box's disk when asked for less ("Ignoring requested virtual disk size"):
        refused here, so the machine gets the size asked for or an error."""
        if self._provider != "libvirt" or self.config.get("disk_size") is None:
            return
        box = str(self.config.get("box") or DEFAULT_BOX)
        home = os.environ.get("VAGRANT_HOME") or os.path.expanduser("~/.vagrant.d")
        folder = os.path.join(home, "boxes", box.replace("/", "-VAGRANTSLASH-"))
        sizes = []
        for path in glob.glob(os.path.join(folder, "*", "libvirt", "metadata.json")) + \
                glob.glob(os.path.join(folder, "*", "*", "libvirt", "metadata.json")):
            try:
                with open(path, encoding="utf-8") as handle:
                    sizes.append(int(json.load(handle).get("virtual_size") or 0))
            except (OSError, ValueError, TypeError):
                continue
        if sizes and self._disk_gb() < max(sizes):
            raise PreCreateError(f"--virtualbox-disk-size {self.config['disk_size']} is below the {max(sizes)} GB disk "
                                 f"of box {box}, which libvirt cannot shrink; ask for at least {max(sizes) * 1024}")

    def _disk_gb(self) -> int:
        return max(1, -(-int(self.config.get("disk_size") or DEFAULT_LIBVIRT_DISK_MB) // 1024))

    def _check_no_leftover_vm(self) -> None:
        """A VM of our name already in the hypervisor (an earlier machine's, whose store entry is gone) would make
        `vagrant up` fail half-way, or be taken over: refused, with the command that removes it."""
        if self._provider == "virtualbox":
            command, remove = ["VBoxManage", "list", "vms"], f"VBoxManage unregistervm {self._domain} --delete"
        else:
            command = ["virsh", "-c", "qemu:///system", "list", "--all", "--name"]
            remove = f"virsh -c qemu:///system undefine {self._domain} --remove-all-storage"
        try:
            listed = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            return  # the provider's own tool is missing or hangs: `vagrant up` reports that better
        names = {line.strip().split('"')[1] if line.startswith('"') else line.strip() for line in listed.splitlines()}
        if self._domain in names:
            raise PreCreateError(f"a VM named {self._domain} already exists in {self._provider} (left by an earlier "
                                 f"machine {self.machine_name}?); remove it first: {remove}")

    def create(self, ledger: Ledger) -> None:
        os.makedirs(self.store_dir, exist_ok=True)
        host_public_key = self._write_host_key()
        self._write_project(host_public_key)
        # Recorded before `up`: a half-made VM (boot timeout, Ctrl-C) is destroyed just the same.
        ledger.record(f"Vagrant VM {self._domain} ({self._provider})", self._destroy)
        self._call("up", self._vagrant().up, provider=self._provider)
        self._read_ssh_config()
        self._read_forwarded_ports()

    def _write_host_key(self) -> str:
        """Generate the guest's SSH host key here, so the first connection can already be verified."""
        private, public = generate_host_key()
        public_line = f"{public} machines-{self.machine_name}-host"
        atomic_write(Path(self.store_dir, HOST_KEY), private.encode())
        Path(self.store_dir, f"{HOST_KEY}.pub").write_text(public_line + "\n")
        return public_line

    def _write_project(self, host_public_key: str) -> None:
        """The Vagrantfile and the first-boot script; both hold nothing a reader of the store may not see (0600)."""
        with open(f"{self.ssh_key_path}.pub") as file:
            public_key = file.read().strip()
        host_private_key = Path(self.store_dir, HOST_KEY).read_text()
        script = PROVISION.format(public_key=shlex.quote(public_key), host_private_key=host_private_key,
                                  host_public_key=shlex.quote(host_public_key), name=self.machine_name)
        atomic_write(Path(self.store_dir, "provision.sh"), script.encode())
        network = self._network()
        if self._provider != "virtualbox":
            forwards = ""  # libvirt's management network is already host-only
        elif self.config.get("nat"):
            # The API port too: the core reaches it at 127.0.0.1 (see ip()), auto_correct avoids taken ports.
            forwards = '  config.vm.network "forwarded_port", guest: 2376, host: 2376, host_ip: "127.0.0.1", ' \
                       'auto_correct: true, id: "docker"'
        else:
            forwards = (f'  config.vm.network "private_network", ip: {_ruby(self._hostonly_address())}, '
                        f'netmask: {_ruby(str(network.netmask))}')
        qemu = self.config.get("libvirt_driver") == "qemu"
        cpu = '    lv.cpu_mode = "custom"\n    lv.cpu_model = "qemu64"\n' if qemu else ""
        text = VAGRANTFILE.format(
            name=self.machine_name, domain=_ruby(self._domain), box=_ruby(str(self.config.get("box") or DEFAULT_BOX)),
            boot_timeout=int(self.config.get("boot_timeout") or 300), key=_ruby(self.ssh_key_path), network=forwards,
            memory=int(self.config["memory"]), cpus=int(self.config["cpu_count"]),
            disk_gb=self._disk_gb(),
            libvirt_driver=_ruby(str(self.config.get("libvirt_driver") or "kvm")),
            network_name=_ruby(self.libvirt_network_name()), network_address=_ruby(str(network.network)),
            libvirt_cpu=cpu, disk=self._primary_disk(),
        )
        atomic_write(Path(self.store_dir, "Vagrantfile"), text.encode())

    def _primary_disk(self) -> str:
        """The VirtualBox provider's primary-disk size once ``set`` grew it (Vagrant's experimental disks feature)."""
        if self._provider != "virtualbox" or self.config.get("disk_size") is None:
            return ""
        return f'  config.vm.disk :disk, name: "machines-root", size: "{int(self.config["disk_size"])}MB", primary: true\n'

    def _hostonly_address(self) -> str:
        """A fixed guest address on the host-only network: the lowest one no other machine in the store holds.

        VirtualBox's host-only DHCP would hand out addresses we could only learn by logging in; a fixed one is known
        before boot and survives restarts (so the server certificate stays valid).
        """
        if self.config.get("ip"):
            return str(self.config["ip"])
        network = self._network()
        taken = {str(network.ip)} | _sibling_addresses(Path(self.store_dir))
        for address in network.network.hosts():
            if str(address) not in taken and address != network.network.network_address + 1:
                self.config["ip"] = str(address)
                return str(address)
        raise DriverError(f"no free address left on host-only network {network.network}")

    def libvirt_network_name(self) -> str:
        """The libvirt network for this CIDR: machines on one CIDR share it; Vagrant removes it with the last one."""
        network = self._network().network
        return f"machines-{network.network_address}-{network.prefixlen}"

    def _read_ssh_config(self) -> None:
        """Keep where sshd answers (``vagrant ssh-config``), so ``ssh``/``ip`` cost no Vagrant call."""
        conf = self._call("ssh-config", self._vagrant().conf)
        self.config["ssh_host"] = conf.get("HostName")
        self.config["ssh_port"] = int(conf.get("Port") or 22)

    def _read_forwarded_ports(self) -> None:
        """With NAT, keep the host port Vagrant forwarded to the guest's API port (it moves taken ports).

        Two machines must never share one: a port another NAT machine of this store records is refused.
        """
        if not self.config.get("nat"):
            return
        output = self._call("port", self._vagrant()._run_vagrant_command, ["port", "--machine-readable"])
        forwards = {}
        for line in output.splitlines():
            fields = line.strip().split(",")
            if len(fields) >= 5 and fields[2] == "forwarded_port" and fields[3].isdigit() and fields[4].isdigit():
                forwards[int(fields[3])] = int(fields[4])
        if GUEST_API_PORT not in forwards:
            raise DriverError(f"Vagrant forwarded no host port to the API port {GUEST_API_PORT} of {self._domain}")
        taken = _sibling_api_ports(Path(self.store_dir))
        if forwards[GUEST_API_PORT] in taken:
            raise DriverError(f"Vagrant forwarded 127.0.0.1:{forwards[GUEST_API_PORT]} to {self._domain}, but machine "
                              f"{taken[forwards[GUEST_API_PORT]]} uses that port; stop it or use a host-only network")
        self.config["api_port"] = forwards[GUEST_API_PORT]

    def _destroy(self) -> None:
        if os.path.exists(os.path.join(self.store_dir, "Vagrantfile")):
            self._call("destroy", self._vagrant().destroy)

    def remove(self) -> None:
        """``vagrant destroy -f``: the VM, its disk volume and (with the last machine on it) the libvirt network."""
        self._destroy()
        shutil.rmtree(os.path.join(self.store_dir, ".vagrant"), ignore_errors=True)

    def start(self) -> None:
        if self.state() is State.PAUSED:
            self._call("resume", self._vagrant().resume)
        else:
            self._call("up", self._vagrant().up, provider=self._provider, provision=False)
        self._read_ssh_config()
        self._read_forwarded_ports()

    def stop(self) -> None:
        self._call("halt", self._vagrant().halt)

    def kill(self) -> None:
        self._call("halt --force", self._vagrant().halt, force=True)

    def restart(self) -> None:
        self._call("reload", self._vagrant().reload, provision=False)
        self._read_ssh_config()
        self._read_forwarded_ports()

    def change(self, flags: Mapping[str, Any]) -> None:
        """``machines set``: CPUs, memory and (VirtualBox provider) a larger disk, as Vagrant applies them.

        The Vagrantfile's provider block is rewritten; a running VM gets ``vagrant reload`` (a reboot: its
        containers restart with the engine), a stopped one takes the values at its next start. If the reload fails,
        the previous Vagrantfile is put back and the VM booted with it.
        """
        resources = {"memory", "cpu_count", "disk_size"}
        if not set(flags) <= resources:
            super().change({key: value for key, value in flags.items() if key not in resources})
        for key, option, lowest in (("memory", "memory", 128), ("cpu_count", "cpu-count", 1),
                                    ("disk_size", "disk-size", 1024)):
            if key in flags and (not isinstance(flags[key], int) or isinstance(flags[key], bool)
                                 or flags[key] < lowest):
                raise DriverError(f"--virtualbox-{option} must be a whole number of at least {lowest}, "
                                  f"not {flags[key]!r}")
        if "disk_size" in flags:
            self._check_disk_growth(int(flags["disk_size"]))
        state = self.state()
        if state not in (State.RUNNING, State.STOPPED):
            raise DriverError(f"{self.machine_name} is {state.value.lower()}: Vagrant changes the VM's resources when it is "
                              f"running (with a reboot) or stopped; start or stop it first")
        vagrantfile = Path(self.store_dir, "Vagrantfile")
        previous_text, previous_flags = vagrantfile.read_bytes(), dict(self.flag_values)

        def put_back() -> None:
            self.flag_values.clear()
            self.flag_values.update(previous_flags)

        self.flag_values.update(flags)  # the Vagrantfile and Vagrant's environment follow the new values
        try:
            self._write_project(str(self._host_public_key()))
            if state is State.RUNNING:
                self.restart()
        except DriverError as error:
            put_back()
            atomic_write(vagrantfile, previous_text)
            if state is State.STOPPED:
                raise
            try:
                self.start()
            except DriverError as again:
                raise DriverError(f"{error}; booting with the previous settings failed too: {again}") from None
            raise DriverError(f"{error}; the previous settings were put back") from None
        finally:
            put_back()  # the caller records the new values once this returns

    def _check_disk_growth(self, wanted: int) -> None:
        """Only VirtualBox grows a disk after create (never shrinks it); vagrant-libvirt sizes it at create only."""
        if self._provider != "virtualbox":
            raise DriverError("the libvirt provider sizes the disk only when it creates the VM (vagrant-libvirt's "
                              "machine_virtual_size): --virtualbox-disk-size cannot change after create")
        current = self.config.get("disk_size")
        if current is not None and wanted <= int(current):
            raise DriverError(f"--virtualbox-disk-size {wanted} is not larger than the disk's {current} MB: "
                              f"VirtualBox can only grow a disk")

    def state(self) -> State:
        if not os.path.exists(os.path.join(self.store_dir, "Vagrantfile")):
            return State.NOT_FOUND
        statuses = self._call("status", self._vagrant().status)
        raw = statuses[0].state if statuses else "not_created"
        return STATES.get(raw or "not_created", State.ERROR)

    def ip(self) -> str:
        """The address the API is reached at: the guest's host-only/management address, or 127.0.0.1 with NAT."""
        if self.config.get("nat"):
            return "127.0.0.1"
        if self.config.get("ip"):
            return str(self.config["ip"])
        if not self.config.get("ssh_host"):
            self._read_ssh_config()
        return str(self.config["ssh_host"])

    def url(self, port: int = GUEST_API_PORT) -> str:
        """With NAT: 127.0.0.1 and the host port Vagrant chose for the guest's API port."""
        if self.config.get("nat") and port == GUEST_API_PORT:
            if not self.config.get("api_port"):
                self._read_forwarded_ports()
            return f"tcp://127.0.0.1:{self.config['api_port']}"
        return super().url(port)

    def ssh_details(self) -> SSHDetails:
        if not self.config.get("ssh_host"):
            self._read_ssh_config()
        return SSHDetails(str(self.config["ssh_host"]), int(self.config.get("ssh_port") or 22), "root",
                          self.ssh_key_path)

    def initial_host_key(self) -> str | None:
        """The host key this driver generated and the first-boot script installed."""
        public = self._host_public_key()
        return " ".join(public.split()[:2]) if public else None


def _provider_usable(provider: str) -> tuple[bool, str]:
    """Whether Vagrant can use ``provider``, and if not, Vagrant's own reason (one line) when it gives one.

    ``vagrant provider --usable`` only answers yes or no (it needs a project: an empty one is made); the reason (an
    unsupported VirtualBox version, a kernel module not loaded...) is what the provider raises when a command needs
    it, so ``vagrant status`` is asked in the same project.
    """
    with tempfile.TemporaryDirectory(prefix="machines-vagrant-") as project:
        Path(project, "Vagrantfile").write_text('Vagrant.configure("2") do |config| end\n')
        environment = {**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_DEFAULT_PROVIDER": provider}
        try:
            result = subprocess.run(["vagrant", "provider", "--usable"], cwd=project, env=environment,
                                    capture_output=True, timeout=120)
            if result.returncode == 0:
                return True, ""
            status = subprocess.run(["vagrant", "status"], cwd=project, env=environment, capture_output=True,
                                    text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return False, ""
        return False, NOT_USABLE_PREAMBLE.sub("", " ".join(status.stderr.split()))


def _sibling_configs(store_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, flags and discovered state) of the other virtualbox machines in the same store (through its records)."""
    store = Store(store_dir.parent.parent)
    for name in store.names():
        if name == store_dir.name:
            continue
        try:
            record = store.load(name)
        except MachinesError:
            continue
        if record.get("driver_name") == VirtualBoxDriver.name:
            yield name, {**(record.get("driver") or {}), **(record.get("driver_state") or {})}


def _sibling_api_ports(store_dir: Path) -> dict[int, str]:
    """Host ports other NAT machines of the same store forward to their API, with the machine's name."""
    return {int(config["api_port"]): name for name, config in _sibling_configs(store_dir) if config.get("api_port")}


def _sibling_addresses(store_dir: Path) -> set[str]:
    """Host-only addresses of the other virtualbox machines in the same store."""
    return {str(config["ip"]) for _, config in _sibling_configs(store_dir) if config.get("ip")}
