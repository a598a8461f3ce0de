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
  # Docker Engine for --engine docker machines: local hosts see it through their copy-on-write root (tests/swarm)
  docker.io
  # image signing interoperability (tests/trust): GPG simple signing both ways with skopeo
  skopeo gnupg
  # image scanning (tests/scan): rpm, Berkeley DB's db_load and its Python binding make and change real rpm
  # databases; Go reads build info as well
  rpm db5.3-util python3-bsddb3 golang-go
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
  # Installed, never started here: a dockerd with its defaults would rewrite this machine's iptables. Without
  # systemd, invoke-rc.d asks policy-rc.d; 101 means "do not start services" (a temporary one if there is none).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -q -o DPkg::Lock::Timeout=300
  apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}"
fi
# The docker CLI: /usr/local/bin/docker when there is one (the CI image has docker 28, first on PATH), else
# docker.io's 20.10 client.

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# setuptools installs our package-dir layout through a meta path finder and warns each time that folders of the working
# directory named like the package may shadow it: here machines/ is the package itself (its links included), and the
# other top folders are never imported by their own names (tests/foundation/test_architecture.py), so it is silenced.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e '.[test]'
# Wheels for tests/foundation/test_packaging.py, which installs our wheel offline next to the index's unrelated
# "drivers" and "runtime" (tests reach no network): under /var/cache/machines-test/wheelhouse, once.
.venv/bin/python -m tests.support.wheelhouse
