# Installs sections of scripts/packages.txt with apt, on Debian. Sourced by
# install.sh, .ci/run and scripts/check-fresh-install.sh.
#
# Everything apt-related here honours APT_CONFIG: the fresh-install check points
# it at a throwaway configuration (its own dpkg status, sources and lists), so
# the same decisions run against a machine as it comes instead of this one.
#
# Backports: a machine of this kind comes with some packages from
# <codename>-backports (qemu-utils 10.0 on bookworm). A package built from the
# same source (qemu-system-x86 from qemu) must then come from backports too,
# or apt refuses the stable one ("held broken packages"). The suite is added
# with the URI and keyring of the machine's own Debian source; no mirror name
# is written here.

cocoon_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
package_list="$cocoon_root/scripts/packages.txt"

# packages SECTION...: the package names listed under those sections.
packages() {
  awk -v want=" $* " '
    /^\[.*\]$/ { section = substr($0, 2, length($0) - 2); next }
    /^[[:space:]]*(#|$)/ { next }
    index(want, " " section " ") { print $1 }
  ' "$package_list"
}

# apt_dir KEY: a directory or file of apt's configuration (Dir::Etc::sourceparts,
# Dir::State::status, ...), as the current APT_CONFIG resolves it.
apt_dir() {
  local value
  eval "$(apt-config shell value "$1/f")"
  printf '%s\n' "$value"
}

codename() {
  (. /etc/os-release && printf '%s\n' "$VERSION_CODENAME")
}

# debian_source FIELD: FIELD (URIs, Signed-By) of the machine's Debian source
# for the release itself (the deb822 stanza whose Suites include <codename>).
debian_source() {
  local field=$1 parts suite
  parts=$(apt_dir Dir::Etc::sourceparts)
  suite=$(codename)
  cat "$parts"/*.sources 2>/dev/null | awk -v field="$field" -v suite="$suite" '
    function flush() {
      if (matched && value != "") { print value; found = 1; exit }
      matched = 0; value = ""
    }
    /^[[:space:]]*$/ { flush(); next }
    /^#/ { next }
    {
      key = $1; sub(/:$/, "", key)
      if (key == "Suites") for (i = 2; i <= NF; i++) if ($i == suite) matched = 1
      if (key == field) { value = $2 }
    }
    END { if (!found) flush() }
  '
}

# ensure_backports: adds <codename>-backports (deb822, the Debian source's URI
# and keyring) unless some source already names it.
ensure_backports() {
  local parts suite uri keyring
  parts=$(apt_dir Dir::Etc::sourceparts)
  suite="$(codename)-backports"
  if grep -rqsE "(^|[[:space:]])$suite([[:space:]]|$)" "$parts" "$(apt_dir Dir::Etc::sourcelist)"; then
    return 1
  fi
  uri=$(debian_source URIs)
  keyring=$(debian_source Signed-By)
  if [ -z "$uri" ]; then
    echo "error: no Debian source for $(codename) in $parts/*.sources to take $suite from" >&2
    exit 1
  fi
  echo "==> adding $suite ($uri) to $parts/cocoon-backports.sources" >&2
  {
    echo "Types: deb"
    echo "URIs: $uri"
    echo "Suites: $suite"
    echo "Components: main"
    [ -n "$keyring" ] && echo "Signed-By: $keyring"
  } >"$parts/cocoon-backports.sources"
}

# backports_version PKG: PKG's version in <codename>-backports, if it has one.
backports_version() {
  apt-cache policy "$1" | awk -v suite=" $(codename)-backports/" '
    /^ +(\*\*\* )?[^ ]+ -?[0-9]+$/ { sub(/\*\*\* /, ""); version = $1; next }
    index($0, suite) && version != "" { print version; exit }
  '
}

# source_of PKG VERSION: "SOURCE SOURCE_VERSION" of that binary package.
source_of() {
  apt-cache show "$1=$2" 2>/dev/null | awk -v pkg="$1" -v ver="$2" '
    /^Source:/ { src = $2; if ($3 ~ /^\(/) { sv = $3; gsub(/[()]/, "", sv) } }
    /^$/ { exit }
    END { print (src == "" ? pkg : src), (sv == "" ? ver : sv) }
  '
}

# wants_backports PKG: true when an installed package was built from the same
# source at PKG's backports version (qemu-utils 10.0~bpo → qemu-system-x86).
wants_backports() {
  local version source status
  version=$(backports_version "$1")
  [ -n "$version" ] || return 1
  source=$(source_of "$1" "$version")
  status=$(apt_dir Dir::State::status)
  dpkg-query --admindir="$(dirname "$status")" -W \
    -f '${db:Status-Abbrev} ${source:Package} ${source:Version}\n' 2>/dev/null |
    awk -v want="$source" '$1 == "ii" && ($2 " " $3) == want { found = 1 } END { exit !found }'
}

# install_sections [--simulate] SECTION...: apt-get install of those sections,
# each package that must match an installed backports build from backports.
install_sections() {
  local simulate=() pkg from_stable=() from_backports=() suite
  if [ "${1:-}" = --simulate ]; then
    simulate=(-s)
    shift
  fi
  suite="$(codename)-backports"
  apt-get update -qq
  if ensure_backports; then
    apt-get update -qq
  fi
  for pkg in $(packages "$@"); do
    if wants_backports "$pkg"; then
      from_backports+=("$pkg")
    else
      from_stable+=("$pkg")
    fi
  done
  apt-get install -y -qq --no-install-recommends "${simulate[@]}" "${from_stable[@]}"
  if [ ${#from_backports[@]} -gt 0 ]; then
    echo "==> from $suite (to match the installed build of the same source): ${from_backports[*]}" >&2
    # -t, not PKG/suite: only -t lets the dependencies (qemu-system-common,
    # seabios) follow into backports. A transaction of its own, so that
    # nothing else is upgraded from there.
    apt-get install -y -qq --no-install-recommends "${simulate[@]}" -t "$suite" "${from_backports[@]}"
  fi
}
