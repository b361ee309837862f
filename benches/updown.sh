#!/usr/bin/env bash
# berth's up/down benchmark on the peers' stacks (../shared/peers/gen-stacks.sh), and the
# supervisor's memory per running container.
# Usage: sudo benches/updown.sh [RUNS]     (default 5 runs per stack, after 1 warm-up;
#        BERTH=/path/to/berth measures that binary instead of building this tree's release;
#        BEFORE=/path/to/other/berth runs both binaries in the same loop, alternating which goes
#        first each round, and prints both; STACKS="flat-1 flat-50" picks stacks; PSS=0 skips
#        the memory part)
# Prints medians in seconds. Compare with ../shared/peers/RESULTS.md as ratios (see README).
# "cpu (s)": CPU-seconds of every process of the `up` (CLI, keeper, supervisor, runtime
# helpers; not the containers, which run in their own cgroups) from a cpuacct cgroup the bench
# runs in, a figure that the machine's load does not inflate as it does wall time.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS:-$here/../shared/peers}
runs=${1:-5}
if [ -z "${BERTH:-}" ]; then
  cargo build --release --manifest-path "$here/Cargo.toml" --bin berth >/dev/null
fi
berth=${BERTH:-$here/target/release/berth}
work=$(mktemp -d)
export BERTH_ROOT=$work/root
trap 'for d in "$work"/stacks/*/; do "$berth" -f "$d/compose.yaml" down -t 1 >/dev/null 2>&1 || true; done; rm -rf "$work"' EXIT
STACKS=$work/stacks IMG=lab/busybox:1 bash "$peers/gen-stacks.sh" >/dev/null
"$berth" load -q -i "$peers/images/lab-busybox-1.docker.tar"
median() { sort -n | awk '{a[NR]=$1} END {m=int((NR+1)/2); if (NR%2) print a[m]; else printf "%.3f\n", (a[m]+a[m+1])/2}'; }
now() { date +%s.%N; }
# CPU accounting: this shell and all it starts in a cgroup of its own (v2 or v1 cpuacct).
cg=""
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  cg=/sys/fs/cgroup/berth-updown-$$; mkdir "$cg"; echo $$ >"$cg/cgroup.procs"
  cpu_ns() { awk '/^usage_usec/ {print $2 * 1000}' "$cg/cpu.stat"; }
elif [ -d /sys/fs/cgroup/cpuacct ]; then
  cg=/sys/fs/cgroup/cpuacct/berth-updown-$$; mkdir "$cg"; echo $$ >"$cg/tasks"
  cpu_ns() { cat "$cg/cpuacct.usage"; }
else
  cpu_ns() { echo 0; }
fi
leave_cg() {
  [ -n "$cg" ] || return 0
  local top; top=$(dirname "$cg")
  if [ -f "$cg/cgroup.procs" ] && [ -f "$top/cgroup.procs" ]; then echo $$ >"$top/cgroup.procs"; fi
  [ -f "$top/tasks" ] && echo $$ >"$top/tasks"
  rmdir "$cg" 2>/dev/null || true
}
trap 'for d in "$work"/stacks/*/; do "$berth" -f "$d/compose.yaml" down -t 1 >/dev/null 2>&1 || true; done; leave_cg; rm -rf "$work"' EXIT
bins=("$berth"); names=(""); [ -n "${BEFORE:-}" ] && { bins=("$BEFORE" "$berth"); names=(":before" ":after"); }
printf '%-18s %10s %10s %10s\n' stack "up -d (s)" "cpu (s)" "down (s)"
for st in ${STACKS:-flat-1 flat-10 flat-50 chain-10}; do
  f=$work/stacks/$st/compose.yaml
  declare -A ups=() cpus=() downs=()
  for i in $(seq 0 "$runs"); do
    order=$(seq 0 $(( ${#bins[@]} - 1 ))); [ $((i % 2)) -eq 1 ] && order=$(echo "$order" | tac)
    for k in $order; do
      b=${bins[$k]}
      c0=$(cpu_ns); t0=$(now); "$b" -p "b$st" -f "$f" up -d >/dev/null 2>&1; t1=$(now); c1=$(cpu_ns)
      "$b" -p "b$st" -f "$f" down >/dev/null 2>&1; t2=$(now)
      [ "$i" -eq 0 ] && continue   # warm-up
      ups[$k]+="$(echo "$t1 - $t0" | bc -l) "; downs[$k]+="$(echo "$t2 - $t1" | bc -l) "
      cpus[$k]+="$(echo "($c1 - $c0) / 1000000000" | bc -l) "
    done
  done
  for k in "${!bins[@]}"; do
    m() { tr ' ' '\n' | grep . | median; }
    printf '%-18s %10.3f %10.3f %10.3f\n' "$st${names[$k]}" "$(echo "${ups[$k]}" | m)" "$(echo "${cpus[$k]}" | m)" "$(echo "${downs[$k]}" | m)"
  done
  unset ups cpus downs
done
[ "${PSS:-1}" = 0 ] && exit 0
# Supervisor memory (PSS) with 50 running containers versus 1, each project alone (the
# binary's pages are shared, so a second berth process beside it would halve their share), read
# 5 s after `up` (the heap is trimmed and the binary's text let go of 3 s after an `up`,
# supervisor/mem.rs) and once the fork server is gone. The keeper (supervisor/keeper.rs) is the
# supervisor's parent, one per project: counted too. Then at 50: by mapping
# (/proc/<pid>/smaps), right after a `ps`, `stop` and `start` of one service (the text those ran
# is mapped again), and 11 s later (10 s after the last request the supervisor lets go of it
# again). BERTH_KEEP_TEXT=1 measures without that.
pss() { awk '/^Pss:/ {s+=$2} END {print s}' "/proc/$1/smaps_rollup"; }
keeper() { awk '{print $4}' "/proc/$1/stat"; }
by_mapping() { # PSS in KiB by kind of mapping: the berth binary's text, read-only data, the rest
  awk -v bin="$(readlink -f "$berth")" '
    /^[0-9a-f]+-[0-9a-f]+ / { k = ($6 == bin) ? "binary " $2 : ($6 ~ /^\// ? "other files" : ($6 == "" ? "anon" : $6)); next }
    /^Pss:/ { s[k] += $2 }
    END { for (k in s) if (s[k]) printf "%s %d, ", k, s[k]; print "KiB" }' "/proc/$1/smaps"
}
for n in 1 50; do
  f=$work/stacks/flat-$n/compose.yaml
  "$berth" -p "m$n" -f "$f" up -d >/dev/null 2>&1
  sleep 5
  s=$(cat "$BERTH_ROOT/run/projects/m$n/supervisor.pid")
  # The runtime's fork server ends 5 s after the last create: read once it has (it shares
  # the binary's pages, which would lower the supervisor's share); bounded.
  for _ in $(seq 50); do pgrep -P "$s" -f "__runtime .*serve" >/dev/null || break; sleep 0.2; done
  eval "p$n=$(pss "$s") k$n=$(pss "$(keeper "$s")")"
  if [ "$n" = 50 ]; then
    parts=$(by_mapping "$s")
    "$berth" -p "m$n" -f "$f" ps >/dev/null 2>&1
    "$berth" -p "m$n" -f "$f" stop -t 1 s01 >/dev/null 2>&1
    "$berth" -p "m$n" -f "$f" start s01 >/dev/null 2>&1
    used=$(pss "$s")
    sleep 11
    rested=$(pss "$s")
  fi
  "$berth" -p "m$n" -f "$f" down >/dev/null 2>&1
done
echo "supervisor PSS: ${p1} KiB with 1 container, ${p50} KiB with 50 ($(( (p50 - p1) / 49 )) KiB per extra container)"
echo "keeper PSS: ${k1} KiB (1 container), ${k50} KiB (50); supervisor + keeper at 50: $(( p50 + k50 )) KiB"
echo "supervisor at 50 by mapping: $parts"
echo "supervisor at 50 right after ps, stop, start: ${used} KiB; 11 s later: ${rested} KiB"
