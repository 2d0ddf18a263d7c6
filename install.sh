#!/usr/bin/env bash
# Installs cocoon on Debian 12: system packages, the release binary, shell
# completions and man pages. Run as root from a checkout.
set -euo pipefail
cd "$(dirname "$0")"

prefix=${PREFIX:-/usr/local}
export DEBIAN_FRONTEND=noninteractive

echo "==> installing Debian packages" >&2
apt-get update -qq
grep -v '^#' scripts/debian-packages.txt | xargs apt-get install -y -qq --no-install-recommends >/dev/null

echo "==> building cocoon (release)" >&2
cargo build --release --locked -p cocoon

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
