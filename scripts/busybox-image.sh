#!/usr/bin/env bash
# Writes to stdout a one-layer container image (a tar) with Debian's static
# busybox: every applet linked to it, a root and a nobody user. install.sh
# imports it as local/busybox, so the README's first VM needs no network
# beyond Debian's mirror. The package is unpacked, never installed (that
# would replace the host's busybox).
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root busybox-static)
dpkg-deb -x "$work"/busybox-static_*.deb "$work/pkg"
tree=$work/tree
mkdir -p "$tree"/{bin,sbin,etc,tmp,root,proc,sys,dev,run,var,usr/bin,usr/sbin}
chmod 1777 "$tree/tmp"
install -m 0755 "$work/pkg/bin/busybox" "$tree/bin/busybox"
for applet in $("$tree/bin/busybox" --list-full); do
  [ -e "$tree/$applet" ] || ln -s /bin/busybox "$tree/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$tree/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$tree/etc/group"
tar -C "$tree" --owner=0 --group=0 --numeric-owner -cf - .
