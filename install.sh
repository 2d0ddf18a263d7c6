#!/usr/bin/env bash
# Installs cocoon on Debian 12: the packages it needs at run time
# (scripts/packages.txt, [build] and [run]), the release binary, shell
# completions and man pages. Run as root from a checkout. Then run
# `cocoon doctor`: it says whether this host can run a VM and what is missing.
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

# QEMU VMs get their vsock device from rust-vmm's vhost-device-vsock (this
# kernel class lacks vhost_vsock); Debian does not package it. Pinned: the
# engine passes its 0.3 flags.
if ! [ -x "$prefix/bin/vhost-device-vsock" ]; then
  echo "==> installing vhost-device-vsock" >&2
  cargo install vhost-device-vsock --version 0.3.0 --locked --root "$prefix"
fi

echo "==> installing to $prefix" >&2
install -D -m 0755 target/release/cocoon "$prefix/bin/cocoon"
bin="$prefix/bin/cocoon"
install -d /usr/share/bash-completion/completions /usr/share/zsh/vendor-completions /usr/share/fish/vendor_completions.d
"$bin" completion bash > /usr/share/bash-completion/completions/cocoon
"$bin" completion zsh > /usr/share/zsh/vendor-completions/_cocoon
"$bin" completion fish > /usr/share/fish/vendor_completions.d/cocoon.fish
"$bin" man-pages "$prefix/share/man/man1"
install -d -m 0750 /var/lib/cocoon /var/log/cocoon
echo "==> done: $("$bin" version | head -1)" >&2
