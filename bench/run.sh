#!/usr/bin/env bash
# Runs every benchmark. Each prints its baseline, our figure and the ratio,
# all measured in the same run on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked -p cocoon-engine --bench state_store
cargo bench --locked -p cocoon-testkit --bench pull
cargo bench --locked -p cocoon-engine --bench net_setup
cargo bench --locked -p cocoon-engine --bench snapshot_sum
cargo build --locked --release -p cocoon
COCOON_BIN=target/release/cocoon python3 bench/vm-boot.py
# The engine's own path of vm start and vm run (CLI exec to VMM exec), free of boot noise; needs perf.
COCOON_BIN=target/release/cocoon python3 bench/exec-gap.py
# vm create alone, against mkfs.ext4 of the same disk (the step it replaced).
COCOON_BIN=target/release/cocoon python3 bench/vm-create.py
# Scale and memory: 100 VMs started in a row (the curve), vm ls of 1,000 VMs,
# gc of 1,000 VMs and 10,000 blobs, peak RSS, relay RSS (fake VMM).
cargo build --locked --release -p cocoon-testkit --bin fake-vmm
COCOON_BIN=target/release/cocoon python3 bench/scale.py
# Snapshot save and clone on XFS (reflink) and ext4 loop mounts; needs root and both real VMMs.
COCOON_BIN=target/release/cocoon python3 bench/snapshot.py
# Snapshots through a registry against skopeo; needs docker-registry and skopeo.
COCOON_BIN=target/release/cocoon python3 bench/registry.py
