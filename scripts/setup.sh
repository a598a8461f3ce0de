#!/usr/bin/env bash
# Installs what machines and its tests need on a fresh Debian 12 machine (as root), then a virtual environment.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  python3 python3-venv openssh-server openssh-client iproute2 iptables e2fsprogs procps psmisc
  busybox-static docker-compose docker-registry runc crun zstd
  # reaching into machines (tests/reach): completion scripts run by real shells, reverse sshfs mounts, scp --delta
  zsh fish sshfs rsync curl
  # the virtualbox driver's tests: Vagrant with the libvirt provider under QEMU, and a Debian test box
  vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients dnsmasq-base ebtables
  qemu-system-x86 qemu-utils debootstrap
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q -o DPkg::Lock::Timeout=300
  apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}"
fi
# The docker CLI: the one on PATH if there is one (the CI image has docker 28), else Debian's 20.10 client.
command -v docker >/dev/null || apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends docker.io

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
