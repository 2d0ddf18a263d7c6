#!/usr/bin/env bash
# Proves that the package step of install.sh and .ci/run works on a machine as
# it comes, whatever this machine has installed since: apt resolves the same
# install (scripts/lib/apt.sh, same decisions) against a throwaway dpkg status
# holding only the fresh image's packages (scripts/fixtures/fresh-machine.status,
# checked against the image's inventory, fresh-machine.txt) and a throwaway copy of the machine's apt sources without anything this
# project added. Nothing is installed; the system's apt state is not touched.
#
# Usage: scripts/check-fresh-install.sh   (as root: apt-get update needs it)
#        scripts/check-fresh-install.sh --record   (on a fresh machine: rewrite
#        both fixtures from this machine's dpkg database)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --record ]; then
  dpkg-query -W -f '${binary:Package}\t${Version}\n' | sort >scripts/fixtures/fresh-machine.txt
  # Every field apt reads (its identity of a version hashes the relations
  # and the installed size); descriptions, conffiles and homepages out.
  awk '
    /^$/ { print; next }
    /^[A-Za-z-]+:/ {
      key = substr($0, 1, index($0, ":") - 1)
      keep = key !~ /^(Description|Conffiles|Homepage|Maintainer|Original-Maintainer|Config-Version|Built-Using|Static-Built-Using)$/
    }
    keep { print }
  ' /var/lib/dpkg/status >scripts/fixtures/fresh-machine.status
  echo "recorded $(wc -l <scripts/fixtures/fresh-machine.txt) packages" >&2
  exit 0
fi
# shellcheck source=lib/apt.sh
. scripts/lib/apt.sh

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

system_parts=$(apt_dir Dir::Etc::sourceparts)
system_lists=$(apt_dir Dir::State::Lists)
system_prefs=$(apt_dir Dir::Etc::preferencesparts)

# apt_root NAME: a private apt configuration under $work/NAME, with the
# machine's sources as a fresh image has them (ours, cocoon-*, left out).
apt_root() {
  local root=$work/$1
  mkdir -p "$root"/{sources,preferences,lists/partial,cache/archives/partial,dpkg/info,dpkg/updates}
  find "$system_parts" -maxdepth 1 -type f \( -name '*.sources' -o -name '*.list' \) \
    ! -name 'cocoon-*' -exec cp {} "$root/sources/" \;
  cp -a "$system_prefs"/. "$root/preferences/" 2>/dev/null || true
  # A head start only: apt-get update re-validates every list it keeps.
  cp -a "$system_lists"/. "$root/lists/" 2>/dev/null || true
  : >"$root/sources.list"
  : >"$root/dpkg/status"
  cat >"$root/apt.conf" <<EOF
Dir::Etc::SourceList "$root/sources.list";
Dir::Etc::SourceParts "$root/sources";
Dir::Etc::PreferencesParts "$root/preferences";
Dir::State::Lists "$root/lists";
Dir::State::status "$root/dpkg/status";
Dir::State::extended_states "$root/extended_states";
Dir::Cache "$root/cache";
APT::Sandbox::User "root";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
EOF
  echo "$root/apt.conf"
}

# 1. The fresh image's dpkg status: the image's own stanzas (their
#    dependencies pin the exact versions it has, which Debian's archive stops
#    carrying after a point release), cut to the fields apt resolves with. It
#    must list exactly the packages of the image's inventory.
fresh_status=scripts/fixtures/fresh-machine.status
if ! diff -u \
  <(awk -F'\t' '!/^#/ && NF { n = $1; sub(/:.*/, "", n); print n "=" $2 }' scripts/fixtures/fresh-machine.txt | sort) \
  <(awk '/^Package:/ { p = $2 } /^Version:/ { print p "=" $2 }' "$fresh_status" | sort) >&2; then
  echo "FAIL: $fresh_status does not match scripts/fixtures/fresh-machine.txt;" \
    "regenerate it on a fresh machine: scripts/check-fresh-install.sh --record" >&2
  exit 1
fi

# 2. The install itself, once as install.sh runs it and once as .ci/run does,
#    each from the fresh image's sources and status.
failed=0
for sections in "build run" "build run test"; do
  conf=$(apt_root "check-${sections// /-}")
  cp "$fresh_status" "$(dirname "$conf")/dpkg/status"
  echo "==> fresh machine: apt-get install -s of [${sections// /] [}]" >&2
  if ! out=$(APT_CONFIG=$conf install_sections --simulate $sections 2>&1); then
    failed=1
    echo "$out" | tail -n 30 >&2
    echo "FAIL: [${sections// /] [}] does not install on a fresh machine" >&2
    continue
  fi
  # Every listed package ends up installed: already there, or in the plan.
  for pkg in $(packages $sections); do
    if ! grep -qE "^(Inst|Conf) $pkg( |:)" <<<"$out" &&
      ! grep -qE "^Package: $pkg$" "$fresh_status"; then
      failed=1
      echo "FAIL: $pkg is neither installed on a fresh machine nor in apt's plan" >&2
    fi
  done
  echo "ok: $(grep -c '^Inst ' <<<"$out") packages would be installed" \
    "($(grep -c '^Inst .*-backports' <<<"$out") from backports)" >&2
done
exit $failed
