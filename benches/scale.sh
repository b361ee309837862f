#!/usr/bin/env bash
# berth at scale: 50, 200 and 500 independent services, and 100 services x 5 replicas.
# For each size: `up -d`, `ps`, `logs --tail 1`, a DNS lookup of every service from one
# container (busybox nslookup, one process per name), the per-event cost of a container
# stop + start (supervisor CPU and wall time per container, averaged over EVENTS pairs of
# `stop`/`start` of one service, default 10; CPU is read in 10 ms ticks), the supervisor's
# CPU-seconds and PSS after `up`, then `down`, then a wait for the machine to be idle again
# (the kernel tears network namespaces down after `down` returns). Sizes run interleaved round by round (the
# machine is shared: noise hits every size alike), medians printed, then the growth factors.
# Usage: sudo benches/scale.sh [ROUNDS]        (default 3 rounds; SIZES="50 200 500 100x5";
#        BERTH=/path/to/berth measures that binary instead of building this tree's release;
#        BEFORE=/path/to/old/berth also measures that one, alternating with BERTH run by run,
#        and prints it as "<size>:before" columns and its own growth factor)
# Every berth command is bounded by `timeout` (TMO seconds, default 300).
# Peers mode: PEER_TOOLS="docker-compose-v2 podman-compose berth" runs benches/scale-peers.sh.
set -euo pipefail
[ -n "${PEER_TOOLS:-}" ] && exec bash "$(dirname "$0")/scale-peers.sh" "$@"
here=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS:-$here/../shared/peers}
rounds=${1:-3}
sizes=${SIZES:-50 200 500 100x5}
events=${EVENTS:-10}
tmo=${TMO:-300}
if [ -z "${BERTH:-}" ]; then
  cargo build --release --manifest-path "$here/Cargo.toml" --bin berth >/dev/null
fi
berth=${BERTH:-$here/target/release/berth}
before=${BEFORE:-}
work=$(mktemp -d)
export BERTH_ROOT=$work/root
cleanup() {
  for f in "$work"/stacks/*.yaml; do
    [ -e "$f" ] || continue
    timeout "$tmo" "$berth" -f "$f" down -t 1 >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/stacks"
"$berth" load -q -i "$peers/images/lab-busybox-1.docker.tar"
# Columns: each size, and with BEFORE each size's "before" run first.
cols=""
for s in $sizes; do
  [ -n "$before" ] && cols="$cols $s:before"
  cols="$cols $s"
done

# stack <size>: N services (or NxR: N services of R replicas), `sleep` under init, all on the
# default network (an automatic /20: 4094 addresses).
stack() {
  local size=$1 n r i f=$work/stacks/s$1.yaml
  n=${size%x*}; r=1; [[ $size == *x* ]] && r=${size#*x}
  {
    echo "name: sc$size"
    echo "services:"
    for i in $(seq 1 "$n"); do
      printf '  s%03d:\n    image: lab/busybox:1\n    command: ["sleep", "1000000"]\n    init: true\n' "$i"
      [ "$r" -gt 1 ] && printf '    deploy:\n      replicas: %d\n' "$r"
    done
  } >"$f"
  echo "$f"
}

now() { date +%s.%N; }
# settle: wait (at most 10 s) until the machine is at least 85% idle over 200 ms. A `down` of
# 500 containers returns before the kernel has torn their network namespaces down (cleanup_net
# runs on a kworker for seconds afterwards); without this the next size's `up` shares the
# cores with that teardown, and which size pays for it depends on the order.
settle() {
  local i a b
  for i in $(seq 1 50); do
    a=$(awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8, $5}' /proc/stat)
    sleep 0.2
    b=$(awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8, $5}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " "); t = y[1] - x[1]; exit !(t > 0 && (y[2] - x[2]) / t >= 0.85)}' && return 0
  done
}
el() { echo "$2 - $1" | bc -l; }
# utime + stime of a process in seconds (its own, not its children's: the runtime helpers).
cpu() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
median() { sort -n | awk '{a[NR]=$1} END {m=int((NR+1)/2); if (NR%2) print a[m]; else printf "%.4f\n", (a[m]+a[m+1])/2}'; }
bin=$berth
b() { timeout "$tmo" "$bin" "$@"; }

raw=$work/raw.tsv
: >"$raw"
for round in $(seq 1 "$rounds"); do
  for col in $cols; do
    size=${col%:before}
    bin=$berth
    [ "$col" != "$size" ] && bin=$before
    f=$(stack "$size")
    p=sc$size
    t0=$(now); b -f "$f" up -d >/dev/null 2>"$work/err" || { cat "$work/err"; exit 1; }; t1=$(now)
    echo -e "$col\tup\t$(el "$t0" "$t1")" >>"$raw"
    sup=$(cat "$BERTH_ROOT/run/projects/$p/supervisor.pid")
    echo -e "$col\tsup_cpu_up\t$(cpu "$sup")" >>"$raw"
    sleep 1
    echo -e "$col\tpss_kib\t$(pss "$sup")" >>"$raw"
    t0=$(now); running=$(b -f "$f" ps -q --status running | wc -l); t1=$(now)
    echo -e "$col\tps\t$(el "$t0" "$t1")" >>"$raw"
    t0=$(now); b -f "$f" logs --tail 1 >/dev/null; t1=$(now)
    echo -e "$col\tlogs\t$(el "$t0" "$t1")" >>"$raw"
    # Every service's name from the first container; a failure is counted, not hidden.
    names=$(awk '/^  s[0-9]+:$/ {sub(":", ""); print $1}' "$f" | tr '\n' ' ')
    t0=$(now)
    fails=$(b -f "$f" exec -T s001 sh -c "f=0; for n in $names; do nslookup \$n >/dev/null 2>&1 || f=\$((f+1)); done; echo \$f")
    t1=$(now)
    echo -e "$col\tdns_all\t$(el "$t0" "$t1")" >>"$raw"
    echo -e "$col\tdns_fail\t$fails" >>"$raw"
    # Per event: stop + start of one container, supervisor CPU and wall time per pair.
    c0=$(cpu "$sup"); t0=$(now)
    for _ in $(seq 1 "$events"); do
      b -f "$f" stop -t 1 s002 >/dev/null 2>&1
      b -f "$f" start s002 >/dev/null 2>&1
    done
    t1=$(now); c1=$(cpu "$sup")
    # Per container: stop/start of a service of R replicas stops and starts R containers.
    r=1; [[ $size == *x* ]] && r=${size#*x}
    echo -e "$col\tevent_cpu_ms\t$(echo "($c1 - $c0) * 1000 / $events / $r" | bc -l)" >>"$raw"
    echo -e "$col\tevent_wall_ms\t$(echo "($t1 - $t0) * 1000 / $events / $r" | bc -l)" >>"$raw"
    t0=$(now); b -f "$f" down -t 1 >/dev/null 2>&1; t1=$(now)
    echo -e "$col\tdown\t$(el "$t0" "$t1")" >>"$raw"
    settle
    echo "round $round size $col: $running running, $fails DNS failures" >&2
  done
done

med() { awk -F'\t' -v s="$1" -v m="$2" '$1 == s && $2 == m {print $3}' "$raw" | median; }
metrics="up ps logs dns_all down sup_cpu_up pss_kib event_cpu_ms event_wall_ms dns_fail"
echo "berth scale bench: medians of $rounds interleaved rounds; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) at the end"
# growth <metric> <suffix>: 500 over 50 for the columns "50<suffix>" and "500<suffix>".
growth() {
  local a z
  a=$(med "50$2" "$1"); z=$(med "500$2" "$1")
  if [ -n "$a" ] && [ -n "$z" ] && [ "$(echo "$a > 0" | bc -l)" = 1 ]; then
    printf '%13.2fx' "$(echo "$z / $a" | bc -l)"
  else
    printf '%14s' -
  fi
}
printf '%-14s' metric
for c in $cols; do printf '%14s' "$c"; done
[ -n "$before" ] && printf "%14s" "x(before)"
printf '%14s\n' "x(50->500)"
for m in $metrics; do
  printf '%-14s' "$m"
  for c in $cols; do printf '%14.3f' "$(med "$c" "$m")"; done
  [ -n "$before" ] && growth "$m" ":before"
  growth "$m" ""
  echo
done
[ -n "${KEEP_RAW:-}" ] && cp "$raw" "$KEEP_RAW"
exit 0
