#!/usr/bin/env bash
# Builds a small Debian 12 Vagrant box for the libvirt provider, for the virtualbox driver's tests and for hosts
# without network access to Vagrant Cloud: `vagrant-box.sh OUT.box` (as root; needs debootstrap, e2fsprogs,
# qemu-utils). About 2-4 minutes, most of it debootstrap fetching packages from the Debian mirror.
#
# Why this shape: no loop devices or mounts are needed (the file system is made with `mkfs.ext4 -d`, the image has no
# partition table), and the box boots its kernel directly (lv.kernel/lv.initrd in the box's Vagrantfile), which skips
# GRUB and boots in about half the time. The guest has the usual Vagrant login (user vagrant, Vagrant's public
# insecure key, passwordless sudo); the driver replaces that key with the machine's own at the first `vagrant up`.
# SSH host keys are made at first boot, so two machines from one box never share them.
set -euo pipefail

out=${1:?usage: vagrant-box.sh OUT.box}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
size=${BOX_SIZE_GB:-2}
insecure_key=$(find /usr/share/rubygems-integration /usr/lib/ruby /usr/share/vagrant /opt/vagrant \
  -name vagrant.pub -path '*keys*' 2>/dev/null | head -n 1 || true)
[ -n "$insecure_key" ] || { echo "vagrant-box: Vagrant's keys/vagrant.pub not found (apt-get install vagrant)" >&2; exit 1; }
for tool in debootstrap mkfs.ext4 qemu-img busybox; do
  command -v "$tool" >/dev/null || { echo "vagrant-box: $tool not found (apt-get install debootstrap e2fsprogs qemu-utils busybox-static)" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/var/tmp}/vagrant-box.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"

debootstrap --variant=minbase \
  --include=systemd-sysv,udev,kmod,linux-image-amd64,openssh-server,python3,sudo,runc,iptables,iproute2,ifupdown,isc-dhcp-client,e2fsprogs,procps \
  bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

echo machines-box >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 machines-box\n' >"$root/etc/hosts"
echo '/dev/vda / ext4 defaults,errors=remount-ro 0 1' >"$root/etc/fstab"
printf 'auto lo\niface lo inet loopback\nallow-hotplug eth0\niface eth0 inet dhcp\n' >"$root/etc/network/interfaces"
# No name server from DHCP either: libvirt's dnsmasq would forward the guest's lookups beyond this computer.
echo 'nameserver 127.0.0.1' >"$root/etc/resolv.conf"
echo 'supersede domain-name-servers 127.0.0.1;' >>"$root/etc/dhcp/dhclient.conf"
printf 'UseDNS no\nPasswordAuthentication no\n' >"$root/etc/ssh/sshd_config.d/10-box.conf"

chroot "$root" useradd --create-home --shell /bin/bash vagrant
install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$insecure_key" "$root/home/vagrant/.ssh/authorized_keys"
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"

# A fresh host key per machine (ed25519 only: RSA key generation is slow under emulation), and the root file
# system grown to the disk the machine was given.
rm -f "$root"/etc/ssh/ssh_host_*
cat >"$root/etc/systemd/system/box-first-boot.service" <<'EOF'
[Unit]
Description=Host keys and root file system size for this machine
Before=ssh.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'test -e /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStart=-/usr/sbin/resize2fs /dev/vda
[Install]
WantedBy=multi-user.target
EOF
ln -s /etc/systemd/system/box-first-boot.service "$root/etc/systemd/system/multi-user.target.wants/box-first-boot.service"

# A tiny initramfs of our own instead of Debian's: busybox loads the virtio disk modules and switches to /dev/vda.
# Under software emulation Debian's (udev probing every driver) costs 40 s or more of each boot.
box="$work/box"
mkdir "$box"
cp "$(ls "$root"/boot/vmlinuz-* | head -n 1)" "$box/vmlinuz"
version=$(basename "$(ls -d "$root"/lib/modules/* | head -n 1)")
modules="$root/lib/modules/$version"
initramfs="$work/initramfs"
mkdir -p "$initramfs"/{bin,dev,proc,sys,newroot,modules}
cp /bin/busybox "$initramfs/bin/busybox"
for applet in sh mount umount insmod switch_root sleep; do ln -s busybox "$initramfs/bin/$applet"; done
wanted() {  # a module's path and those of what it needs, dependencies first, from modules.dep
  local line dependency
  line=$(grep -E "(^|/)$1\.ko(\.[a-z]+)?:" "$modules/modules.dep" || true)
  [ -n "$line" ] || return 0  # built into the kernel
  for dependency in ${line#*:}; do wanted "$(basename "${dependency%%.ko*}")"; done
  echo "${line%%:*}"
}
: >"$initramfs/modules/order"
for path in $(wanted virtio_pci; wanted virtio_blk; wanted crc32c_generic; wanted ext4); do
  name=$(basename "${path%%.ko*}")
  grep -qx "$name" "$initramfs/modules/order" && continue
  case "$path" in
    *.ko.xz) xz -dc "$modules/$path" >"$initramfs/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$modules/$path" >"$initramfs/modules/$name.ko" ;;
    *) cp "$modules/$path" "$initramfs/modules/$name.ko" ;;
  esac
  echo "$name" >>"$initramfs/modules/order"
done
cat >"$initramfs/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r module; do insmod "/modules/$module.ko"; done </modules/order
tries=0
until [ -b /dev/vda ] || [ $tries -ge 600 ]; do sleep 0.1; tries=$((tries + 1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; exec sh; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
INIT
chmod 0755 "$initramfs/init"
# Drivers a small VM never needs: a third of the image, and of every copy Vagrant and libvirt make of it.
rm -rf "$modules"/kernel/sound "$modules"/kernel/drivers/{gpu,media,infiniband,staging,net/wireless,bluetooth,iio,isdn}
chroot "$root" depmod "$version"
(cd "$initramfs" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$box/initrd.img"
chmod 0644 "$box/vmlinuz" "$box/initrd.img"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/boot/* "$root"/vmlinuz* "$root"/initrd.img*

mkfs.ext4 -q -L root -d "$root" "$work/root.img" "${size}G"
qemu-img convert -f raw -O qcow2 "$work/root.img" "$box/box.img"
rm -f "$work/root.img"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%s}\n' "$size" >"$box/metadata.json"
cat >"$box/Vagrantfile" <<'EOF'
Vagrant.configure("2") do |config|
  config.vm.guest = :debian
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.join(File.dirname(__FILE__), "vmlinuz")
    lv.initrd = File.join(File.dirname(__FILE__), "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"
  end
end
EOF
tar -C "$box" -cf "$out.tmp" metadata.json Vagrantfile box.img vmlinuz initrd.img
mv "$out.tmp" "$out"
