#!/usr/bin/env bash
# Run an example stack offline: build berth, make the example's image from Debian's
# busybox-static (no registry needed), load it, and `berth up` the stack.
# Usage: sudo ./examples/run.sh NAME [berth up flags...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=${1:-hello}; shift || true
[ -d "$here/$name" ] || { echo "no example named $name (see $here)" >&2; exit 1; }
# What a fresh Debian machine lacks: the build's libseccomp, nft for port publishing, and the
# static busybox the example image is made of.
if ! [ -x /bin/busybox ] || ! command -v nft >/dev/null || ! pkg-config --exists libseccomp 2>/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static nftables libseccomp-dev pkg-config iproute2 >/dev/null
fi
cargo build --release --manifest-path "$here/../Cargo.toml" --bin berth
berth="$here/../target/release/berth"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
extra=""; [ -d "$here/$name/image" ] && extra="$here/$name/image"
"$here/mkimage.sh" "$tmp/image.tar" berth-example/busybox:1 $extra
"$berth" load -q -i "$tmp/image.tar"
# Without flags the stack runs attached until its first container exits, then is removed;
# pass flags (e.g. -d) to keep it running.
if [ $# -eq 0 ]; then
  code=0
  "$berth" -f "$here/$name/compose.yaml" up --abort-on-container-exit || code=$?
  "$berth" -f "$here/$name/compose.yaml" down
  exit $code
fi
exec "$berth" -f "$here/$name/compose.yaml" up "$@"
