#!/usr/bin/env bash
# Unpacks test assets from Debian packages into target/test-assets (never
# installs them): the cloud kernel, for the vmlinux extraction test.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/test-assets
mkdir -p "$dest"
if ! ls "$dest"/debian-kernel/boot/vmlinuz-* >/dev/null 2>&1; then
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "$pkg")
  dpkg-deb -x "$tmp"/*.deb "$dest/debian-kernel"
  rm -rf "$tmp"
fi
ls "$dest"/debian-kernel/boot/vmlinuz-*
