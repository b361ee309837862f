#!/usr/bin/env bash
# The same edit rolled out by berth and by another compose: 10 web replicas, a client in the
# project fetching http://web/version in a bounded loop (600 requests, 10 s timeout each),
# then VERSION changes and `up -d` runs again. Counts failed requests and times the `up`.
# Usage: sudo COMPOSE="docker compose" benches/rollout-compare.sh    (default COMPOSE=berth)
#   The engine must have the image lab/busybox:1 (../shared/peers/images/lab-busybox-1.docker.tar:
#   `docker load -i …` / `berth load -i …`). docker compose needs dockerd running
#   (../shared/peers/engines.sh start), and ignores update_config outside Swarm.
set -euo pipefail
COMPOSE=${COMPOSE:-berth}
work=$(mktemp -d)
f=$work/compose.yaml
trap '$COMPOSE -p rollcmp -f "$f" down -t 1 >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
gen() {
cat > "$f" <<Y
services:
  web:
    image: lab/busybox:1
    init: true
    environment: {VERSION: "$1"}
    command: ["sh", "-c", "echo \$\$VERSION > /www/version; exec httpd -f -p 80 -h /www"]
    deploy:
      replicas: 10
      update_config: {parallelism: 2, order: start-first}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/version"]
      interval: 1s
      timeout: 3s
      retries: 5
  client:
    image: lab/busybox:1
    init: true
    depends_on: {web: {condition: service_healthy}}
    command: ["sh", "-c", "i=0; while [ \$\$i -lt 600 ]; do i=\$\$((i+1)); timeout 10 wget -q -O /dev/null http://web/version && echo OK || echo FAIL; sleep 0.02; done; echo DONE; sleep 600"]
Y
}
gen v1
$COMPOSE -p rollcmp -f "$f" up -d >/dev/null 2>&1
for _ in $(seq 1 60); do $COMPOSE -p rollcmp -f "$f" logs client 2>/dev/null | grep -q OK && break; sleep 1; done
gen v2
t0=$(date +%s.%N)
$COMPOSE -p rollcmp -f "$f" up -d >/dev/null 2>&1
t1=$(date +%s.%N)
for _ in $(seq 1 180); do $COMPOSE -p rollcmp -f "$f" logs client 2>/dev/null | grep -q DONE && break; sleep 1; done
log=$($COMPOSE -p rollcmp -f "$f" logs --no-log-prefix client 2>/dev/null)
ok=$(grep -c '^OK' <<<"$log" || true); fail=$(grep -c '^FAIL' <<<"$log" || true)
printf '%s: up -d after the edit took %.2f s; requests: %s ok, %s failed\n' "$COMPOSE" "$(echo "$t1 - $t0" | bc -l)" "$ok" "$fail"
