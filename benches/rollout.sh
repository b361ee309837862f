#!/usr/bin/env bash
# Rolling-update benchmark: 10 replicas of a web service, parallelism 2, start-first, rolled to a
# new version while a client container fetches http://web/ in a bounded loop (600 requests).
# Reports the rollout time (the second `berth up -d`) and the failed request count.
# Usage: sudo benches/rollout.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --manifest-path "$here/Cargo.toml" --bin berth >/dev/null 2>&1
berth=$here/target/release/berth
work=$(mktemp -d)
export BERTH_ROOT=$work/root
trap '"$berth" -p rollbench down -t 1 >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
"$here/examples/mkimage.sh" "$work/img.tar" bench/busybox:1
"$berth" load -q -i "$work/img.tar"
gen() {
cat <<Y
name: rollbench
services:
  web:
    image: bench/busybox:1
    init: true
    environment: {VERSION: "$1"}
    command: ["sh", "-c", "echo \$\$VERSION > /www/version; exec httpd -f -p 80 -h /www"]
    deploy:
      replicas: 10
      update_config: {parallelism: 2, order: start-first}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/version"]
      interval: 250ms
      timeout: 3s
      retries: 5
  client:
    image: bench/busybox:1
    init: true
    depends_on: {web: {condition: service_healthy}}
    command: ["sh", "-c", "i=0; while [ \$\$i -lt 600 ]; do i=\$\$((i+1)); timeout 10 wget -q -O /dev/null http://web/version && echo OK || echo FAIL; sleep 0.02; done; echo DONE; sleep 600"]
Y
}
gen v1 > "$work/compose.yaml"
"$berth" -f "$work/compose.yaml" up -d --wait >/dev/null 2>&1
sleep 1
gen v2 > "$work/compose.yaml"
t0=$(date +%s.%N)
"$berth" -f "$work/compose.yaml" up -d >/dev/null 2>&1
t1=$(date +%s.%N)
for _ in $(seq 1 120); do "$berth" -p rollbench logs client | grep -q DONE && break; sleep 1; done
ok=$("$berth" -p rollbench logs --no-log-prefix client | grep -c '^OK' || true)
fail=$("$berth" -p rollbench logs --no-log-prefix client | grep -c '^FAIL' || true)
printf 'rolled 10 replicas (parallelism 2, start-first) in %.2f s; requests during the run: %s ok, %s failed\n' "$(echo "$t1 - $t0" | bc -l)" "$ok" "$fail"
