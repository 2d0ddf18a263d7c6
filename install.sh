#!/usr/bin/env bash
# Installs cocoon on Debian 12: the packages it needs at run time
# (scripts/packages.txt, [build] and [run]), the release binary, cocoon-init
# (PID 1 of container images), shell completions and man pages, the default
# kernel container images boot, and a small local image, local/busybox. Run
# as root from a checkout. Then `cocoon vm run --rm --nics 0 local/busybox --
# uname -a` boots a VM; `cocoon doctor` says what else this host can run.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/lib/apt.sh
. scripts/lib/apt.sh

prefix=${PREFIX:-/usr/local}
export DEBIAN_FRONTEND=noninteractive

echo "==> installing Debian packages" >&2
install_sections build run >/dev/null

echo "==> building cocoon (release)" >&2
cargo build --release --locked -p cocoon

# cocoon-init runs in an initramfs with no libc: a static binary, glibc's
# crt-static on the host's own target (the only one installed).
echo "==> building cocoon-init (static)" >&2
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -p cocoon-init --target "$host"

# QEMU VMs get their vsock device from rust-vmm's vhost-device-vsock (this
# kernel class lacks vhost_vsock); Debian does not package it. Pinned: the
# engine passes its 0.3 flags.
if ! [ -x "$prefix/bin/vhost-device-vsock" ]; then
  echo "==> installing vhost-device-vsock" >&2
  cargo install vhost-device-vsock --version 0.3.0 --locked --root "$prefix"
fi

echo "==> installing to $prefix" >&2
install -D -m 0755 target/release/cocoon "$prefix/bin/cocoon"
# Where the engine looks for it: <prefix>/lib/cocoon beside <prefix>/bin.
install -D -m 0755 "target/$host/release/cocoon-init" "$prefix/lib/cocoon/cocoon-init"
bin="$prefix/bin/cocoon"
install -d /usr/share/bash-completion/completions /usr/share/zsh/vendor-completions /usr/share/fish/vendor_completions.d
"$bin" completion bash > /usr/share/bash-completion/completions/cocoon
"$bin" completion zsh > /usr/share/zsh/vendor-completions/_cocoon
"$bin" completion fish > /usr/share/fish/vendor_completions.d/cocoon.fish
"$bin" man-pages "$prefix/share/man/man1"
install -d -m 0750 /var/lib/cocoon /var/log/cocoon

# Container images boot Debian's cloud kernel, unpacked under
# /var/lib/cocoon/kernels (never installed on the host).
if ! "$bin" kernel ls -o json | grep -q '"release"'; then
  echo "==> installing the default kernel" >&2
  "$bin" kernel install
fi
echo "==> importing local/busybox" >&2
scripts/busybox-image.sh | "$bin" image import local/busybox
echo "==> done: $("$bin" version | head -1)" >&2
