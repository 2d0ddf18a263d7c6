#!/bin/sh
# Regenerates the QMP schema fixture from the QEMU binary on PATH (or $COCOON_QEMU_BINARY):
# writes qmp-schema-<version>.json beside this script, the `return` of
# `query-qmp-schema`, one schema entity per line so that diffs stay readable.
# Usage: crates/vmm-api/spec/qemu/regen.sh   (then update README.md and the
# test's FIXTURE constant if the version changed)
set -eu
qemu=${COCOON_QEMU_BINARY:-qemu-system-x86_64}
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# -M none: no guest at all; the QMP schema does not depend on the machine.
printf '%s\n' \
    '{"execute": "qmp_capabilities"}' \
    '{"execute": "query-version", "id": "version"}' \
    '{"execute": "query-qmp-schema", "id": "schema"}' \
    '{"execute": "quit"}' |
    "$qemu" -M none -nodefaults -no-user-config -display none -qmp stdio >"$out"
python3 - "$out" "$here" <<'PY'
import json, sys
replies = {}
for line in open(sys.argv[1]):
    msg = json.loads(line)
    if "id" in msg:
        if "return" not in msg:
            sys.exit(f"QEMU refused {msg['id']}: {msg}")
        replies[msg["id"]] = msg["return"]
q = replies["version"]["qemu"]
version = f"{q['major']}.{q['minor']}.{q['micro']}"
path = f"{sys.argv[2]}/qmp-schema-{version}.json"
with open(path, "w") as f:
    f.write("[\n")
    f.write(",\n".join(json.dumps(e) for e in replies["schema"]))
    f.write("\n]\n")
print(f"{path}: {len(replies['schema'])} entities, QEMU {version} "
      f"(package {replies['version']['package'].strip() or 'unknown'})")
PY
