#!/usr/bin/env bash
# Build the same multi-stage Dockerfile with berth and (PEERS=1) with Docker Compose v2's
# `docker-compose build` on dockerd's BuildKit: cold (empty cache, base image only), warm
# (nothing changed) and after editing one source file. Prints the median of RUNS per case: wall
# seconds, and for berth also its CPU seconds (user+sys of the command and its children, the
# figure that load on a shared machine disturbs least; dockerd's work is not in its CLI's CPU).
# Not a test: a benchmark. Offline: the base image is made by examples/mkimage.sh.
#
#   sudo benches/build.sh [RUNS]                   # berth only (BERTH=path/to/berth, default: release)
#   sudo PEERS=1 benches/build.sh [RUNS]           # + docker-compose build (dockerd must be running,
#                                                  #   e.g. ../shared/peers/engines.sh start)
set -euo pipefail
runs=${1:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
berth=${BERTH:-$here/target/release/berth}
[ -x "$berth" ] || { echo "build berth first: cargo build --release --bin berth" >&2; exit 1; }
work=$(mktemp -d /tmp/berth-build-bench.XXXXXX)
cleanup() {
  if [ "${PEERS:-0}" = 1 ]; then
    docker-compose -p bbench -f "$work/compose.yaml" down --rmi all >/dev/null 2>&1 || true
    docker rmi bench/busybox:1 >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap - EXIT && echo "work dir: $work"

# The project: a "dependency" stage, a "compile" stage reading 400 source files, a slim final stage.
"$here/examples/mkimage.sh" "$work/base.tar" bench/busybox:1 >/dev/null
ctx=$work/app; mkdir -p "$ctx/src"
for i in $(seq 1 400); do head -c 4096 /dev/urandom | base64 > "$ctx/src/mod$i.txt"; done
echo "lib-a 1.0" > "$ctx/deps.txt"
printf 'src/*.tmp\n' > "$ctx/.dockerignore"
cat > "$ctx/Dockerfile" <<'EOF'
FROM bench/busybox:1 AS deps
WORKDIR /src
COPY deps.txt .
RUN mkdir -p /deps && for i in $(seq 1 100); do head -c 40000 /dev/urandom > /deps/lib$i.so; done
FROM deps AS build
COPY src/ src/
RUN mkdir /out && cat src/*.txt | sha256sum > /out/sum && tar -czf /out/app.tgz src
FROM bench/busybox:1
COPY --from=deps /deps /usr/lib/app
COPY --from=build /out /app
CMD ["ls", "/app"]
EOF
printf 'services:\n  app:\n    build: ./app\n    image: bench/app:1\n' > "$work/compose.yaml"

median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
now() { date +%s.%N; }
t() { local s e; s=$(now); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; "$@" >&2 || true; exit 1; }; e=$(now); awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }'; }
# berth: wall seconds into res[$1], CPU seconds (user+sys, children included) into res[$1_cpu].
tb() {
  local k=$1 out; shift
  out=$( { TIMEFORMAT='%R %U %S'; time "$@" >/dev/null 2>&1; } 2>&1 ) || { echo "failed: $*" >&2; "$@" >&2 || true; exit 1; }
  read -r w u s <<<"$out"
  res[$k]+="$w "
  res[${k}_cpu]+="$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.3f", u + s }') "
}

declare -A res
for r in $(seq 1 "$runs"); do
  edit=$ctx/src/mod$(( (r % 400) + 1 )).txt
  # berth: a fresh state root holding only the base image.
  export BERTH_ROOT=$work/berth-root
  rm -rf "$BERTH_ROOT"; "$berth" load -q -i "$work/base.tar"
  tb berth_cold "$berth" -f "$work/compose.yaml" build --progress plain
  tb berth_warm "$berth" -f "$work/compose.yaml" build --progress plain
  echo "edit $r" >> "$edit"
  tb berth_edit "$berth" -f "$work/compose.yaml" build --progress plain
  unset BERTH_ROOT
  if [ "${PEERS:-0}" = 1 ]; then
    docker-compose -p bbench -f "$work/compose.yaml" down --rmi all >/dev/null 2>&1 || true
    docker builder prune -af >/dev/null 2>&1 || true
    docker load -q -i "$work/base.tar" >/dev/null
    export DOCKER_BUILDKIT=1 COMPOSE_BAKE=false
    res[docker_cold]+="$(t docker-compose -p bbench -f "$work/compose.yaml" build --progress plain) "
    res[docker_warm]+="$(t docker-compose -p bbench -f "$work/compose.yaml" build --progress plain) "
    echo "edit docker $r" >> "$edit"
    res[docker_edit]+="$(t docker-compose -p bbench -f "$work/compose.yaml" build --progress plain) "
  fi
done
echo "median of $runs runs (s); each run: cold (empty cache), warm (no change), one source file edited"
for k in berth_cold berth_warm berth_edit berth_cold_cpu berth_warm_cpu berth_edit_cpu \
  docker_cold docker_warm docker_edit; do
  [ -n "${res[$k]:-}" ] || continue
  printf '%-14s %s   (runs: %s)\n' "$k" "$(echo "${res[$k]}" | tr ' ' '\n' | grep . | median)" "${res[$k]}"
done
if [ -n "${res[docker_cold]:-}" ]; then
  for c in cold warm edit; do
    b=$(echo "${res[berth_$c]}" | tr ' ' '\n' | grep . | median)
    d=$(echo "${res[docker_$c]}" | tr ' ' '\n' | grep . | median)
    # Also each run's own ratio (the same iteration's builds, a few seconds apart).
    per=$(paste -d' ' <(echo "${res[docker_$c]}" | tr ' ' '\n' | grep .) \
      <(echo "${res[berth_$c]}" | tr ' ' '\n' | grep .) | awk '{ printf "%.1f ", $1 / $2 }')
    awk -v c="$c" -v b="$b" -v d="$d" -v per="$per" \
      'BEGIN { printf "docker / berth, %s: %.1fx   (each run: %s)\n", c, d / b, per }'
  done
fi
