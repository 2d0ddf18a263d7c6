#!/usr/bin/env python3
"""Writes a dpkg status file holding exactly the packages of a fresh machine.

Usage: fresh_status.py FIXTURE HOST_STATUS > status

FIXTURE lists "name[:arch]<TAB>version" per installed package (the machine
image as it comes, scripts/fixtures/fresh-machine.txt). Each package's stanza
(its dependencies, conflicts, provides) comes from, in order:
  1. HOST_STATUS, when it holds that package at that version;
  2. `apt-cache show name=version` under the caller's APT_CONFIG;
  3. the version apt knows now, with the fixture's version written in (Debian
     archives keep only a suite's current version; a point release later the
     image's own version may be gone);
  4. a bare stanza (packages from outside Debian, e.g. nodejs).
apt then resolves an install against this file as it would on the fresh
machine, which is what scripts/check-fresh-install.sh needs.
"""

import subprocess
import sys

KEEP = (
    "Package", "Status", "Priority", "Section", "Installed-Size", "Maintainer",
    "Architecture", "Multi-Arch", "Source", "Version", "Replaces", "Provides",
    "Depends", "Pre-Depends", "Recommends", "Suggests", "Breaks", "Conflicts",
    "Enhances", "Essential", "Protected", "Description",
)


def stanzas(text):
    """deb822 stanzas as lists of (field, value-with-continuations)."""
    for block in text.split("\n\n"):
        fields = []
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and fields:
                fields[-1] = (fields[-1][0], fields[-1][1] + "\n" + line)
            elif ":" in line:
                key, value = line.split(":", 1)
                fields.append((key, value.strip()))
        if fields:
            yield fields


def field(stanza, name):
    return next((v for k, v in stanza if k == name), None)


def render(stanza, version):
    out = []
    for key, value in stanza:
        if key not in KEEP or key == "Status":
            continue
        if key == "Version":
            value = version
        out.append(f"{key}: {value}")
        if key == "Package":
            out.append("Status: install ok installed")
    return "\n".join(out) + "\n"


def apt_show(specs):
    """Stanzas apt-cache prints for name=version (or name) specs; misses are skipped."""
    if not specs:
        return []
    run = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *specs],
        capture_output=True, text=True, check=False,
    )
    return list(stanzas(run.stdout))


def main():
    fixture_path, host_status = sys.argv[1], sys.argv[2]
    wanted = {}
    with open(fixture_path) as fixture:
        for line in fixture:
            if line.startswith("#") or not line.strip():
                continue
            name, version = line.rstrip("\n").split("\t")[:2]
            arch = None
            if ":" in name:
                name, arch = name.split(":", 1)
            wanted[name] = (version, arch)

    found = {}

    def take(candidates, exact):
        for stanza in candidates:
            name = field(stanza, "Package")
            if name not in wanted or name in found:
                continue
            version, arch = wanted[name]
            if exact and field(stanza, "Version") != version:
                continue
            if arch and field(stanza, "Architecture") not in (arch, "all"):
                continue
            found[name] = render(stanza, version)

    with open(host_status) as host:
        take(stanzas(host.read()), exact=True)
    missing = [n for n in wanted if n not in found]
    take(apt_show([f"{n}={wanted[n][0]}" for n in missing]), exact=True)
    missing = [n for n in wanted if n not in found]
    take(apt_show(missing), exact=False)
    bare = [n for n in wanted if n not in found]
    for name in bare:
        version, arch = wanted[name]
        found[name] = (
            f"Package: {name}\nStatus: install ok installed\n"
            f"Architecture: {arch or 'amd64'}\nVersion: {version}\n"
            f"Description: {name} (from the fixture only)\n"
        )
    print(f"fresh status: {len(wanted)} packages, {len(bare)} unknown to apt "
          f"(bare stanzas: {' '.join(bare) or 'none'})", file=sys.stderr)
    sys.stdout.write("\n".join(found[n] for n in wanted))


if __name__ == "__main__":
    main()
