#!/usr/bin/env bash
# Rolling-update benchmark for berth alone: builds berth, makes the image offline, and runs
# benches/rollout-compare.sh (10 replicas, parallelism 2, start-first, a client fetching
# http://web/ 600 times during the rollout) with COMPOSE=berth in a private state root.
# Usage: sudo benches/rollout.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --manifest-path "$here/Cargo.toml" --bin berth >/dev/null 2>&1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export BERTH_ROOT=$work/root PATH=$here/target/release:$PATH
"$here/examples/mkimage.sh" "$work/img.tar" lab/busybox:1
berth load -q -i "$work/img.tar"
COMPOSE=berth bash "$here/benches/rollout-compare.sh"
