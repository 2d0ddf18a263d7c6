#!/usr/bin/env bash
# Installs Cloud Hypervisor's UEFI firmware (CLOUDHV.fd), which cloud images
# boot through, without upgrading the system: Debian ships it as
# cloudhv-efi-x86-64 (architecture all, no dependencies) only in suites newer
# than bookworm, so this downloads that one package from testing (else
# unstable) with a private apt state (its own sources, lists and cache; the
# system's apt configuration is not touched) and unpacks CLOUDHV.fd from it.
#
# Usage: scripts/fetch-firmware.sh [DEST]
# DEST defaults to $COCOON_FIRMWARE_PATH, else <root_dir>/firmware/CLOUDHV.fd
# with root_dir from $COCOON_ROOT_DIR or /var/lib/cocoon (cocoon's defaults).
set -euo pipefail

dest=${1:-${COCOON_FIRMWARE_PATH:-${COCOON_ROOT_DIR:-/var/lib/cocoon}/firmware/CLOUDHV.fd}}
package=cloudhv-efi-x86-64
# The machine's own Debian source (URI and keyring), never a mirror of ours.
# shellcheck source=lib/apt.sh
. "$(dirname "$0")/lib/apt.sh"
mirror=${DEBIAN_MIRROR:-$(debian_source URIs)}
keyring=$(debian_source Signed-By)
if [ -z "$mirror" ]; then
  echo "error: no Debian source in $(apt_dir Dir::Etc::sourceparts)/*.sources; set DEBIAN_MIRROR" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sources" "$work/lists/partial" "$work/cache/archives/partial" "$work/deb"
apt_opts=(
  -o "Dir::Etc::SourceList=/dev/null"
  -o "Dir::Etc::SourceParts=$work/sources"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
  -o "APT::Sandbox::User=root"
)

found=
for suite in testing unstable; do
  cat >"$work/sources/newer.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite
Components: main
${keyring:+Signed-By: $keyring}
EOF
  rm -rf "$work/lists"/*_*
  apt-get "${apt_opts[@]}" -qq update
  if (cd "$work/deb" && apt-get "${apt_opts[@]}" -qq download "$package" 2>/dev/null); then
    found=$suite
    break
  fi
done
if [ -z "$found" ]; then
  echo "error: $package is in neither Debian testing nor unstable at $mirror" >&2
  exit 1
fi

dpkg-deb -x "$work/deb"/"$package"_*.deb "$work/root"
firmware=$(find "$work/root" -name CLOUDHV.fd -type f | head -n 1)
if [ -z "$firmware" ]; then
  echo "error: $package from $found has no CLOUDHV.fd" >&2
  exit 1
fi
install -D -m 0644 "$firmware" "$dest"
echo "installed $(basename "$work/deb"/*.deb) ($found) CLOUDHV.fd at $dest"
