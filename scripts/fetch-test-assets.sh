#!/usr/bin/env bash
# Unpacks test assets from Debian packages into target/test-assets (never
# installs them): the cloud kernel (vmlinux extraction test, Linux test guest)
# and busybox-static (the Linux test guest's userland; installing it would
# replace the host's busybox).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/test-assets
mkdir -p "$dest"

# unpack PACKAGE DIR: the package's files under $dest/DIR.
unpack() {
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "$1")
  dpkg-deb -x "$tmp"/*.deb "$dest/$2"
  rm -rf "$tmp"
}

if ! ls "$dest"/debian-kernel/boot/vmlinuz-* >/dev/null 2>&1; then
  unpack "$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')" debian-kernel
fi
if [ ! -x "$dest"/debian-busybox/bin/busybox ]; then
  unpack busybox-static debian-busybox
fi
ls "$dest"/debian-kernel/boot/vmlinuz-* "$dest"/debian-busybox/bin/busybox
