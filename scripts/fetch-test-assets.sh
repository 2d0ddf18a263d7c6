#!/usr/bin/env bash
# Unpacks test assets from Debian packages into target/test-assets (never
# installs them): the cloud kernel (vmlinux extraction test, Linux test guest)
# and busybox-static (the Linux test guest's userland; installing it would
# replace the host's busybox).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/test-assets
mkdir -p "$dest"

# The packages are kept in $dest/debs (the kernel's is what the container
# image tests install with `cocoon kernel install --deb`).
debs=$dest/debs
mkdir -p "$debs"

# unpack PACKAGE DIR: the package's files under $dest/DIR.
unpack() {
  if ! ls "$debs/$1"_*.deb >/dev/null 2>&1; then
    # apt's sandbox user cannot write into a root-owned checkout.
    (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "$1")
  fi
  dpkg-deb -x "$(ls "$debs/$1"_*.deb | head -1)" "$dest/$2"
}

kernel=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if ! ls "$dest"/debian-kernel/boot/vmlinuz-* >/dev/null 2>&1 || ! ls "$debs/$kernel"_*.deb >/dev/null 2>&1; then
  unpack "$kernel" debian-kernel
fi
if [ ! -x "$dest"/debian-busybox/bin/busybox ]; then
  unpack busybox-static debian-busybox
fi
ls "$dest"/debian-kernel/boot/vmlinuz-* "$dest"/debian-busybox/bin/busybox "$debs"/linux-image-*.deb
