#!/usr/bin/env bash
# The peers' column of the scale bench (benches/scale.sh's peers mode: `PEER_TOOLS=... benches/scale.sh`).
# The same stack as scale.sh's (N independent `sleep` services of the lab image lab/busybox:1,
# `init: true`, all on the default network) with Docker Compose v2 (on dockerd) and
# podman-compose (on podman), and berth in the same run when PEER_TOOLS names it. Per tool and
# size: `up -d` (wall, client CPU with its children, machine busy CPU), `ps -q`, `logs --tail 1`,
# every service looked up by name from the first container (busybox nslookup), `down`; and the
# engine's CPU-seconds for the `up` and its memory 5 s after it, counted as the peers'
# bench-mem.sh counts them (lib.sh t_overhead_pids: dockerd + containerd + shims; conmon +
# aardvark-dns; every `berth*` process), plus berth's supervisor alone.
# Usage: sudo PEER_TOOLS="docker-compose-v2 podman-compose berth" benches/scale.sh [ROUNDS]
#        (default 1 round; PEER_SIZES="200" by default; BERTH=/path/to/berth for berth's column;
#        ../shared/peers/install.sh must have installed podman and podman-compose.)
# The peers' folder is copied to a temporary directory (its scripts write next to themselves);
# dockerd is started from there (engines.sh) unless one already runs, and stopped at the end
# with the FORWARD policy and ip_forward put back as they were; every project is taken down.
# Every command is bounded by `timeout` (TMO seconds, default 900).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src_peers=${PEERS:-$here/../shared/peers}
rounds=${1:-1}
tools=${PEER_TOOLS:?PEER_TOOLS names the tools, e.g. "docker-compose-v2 podman-compose berth"}
sizes=${PEER_SIZES:-200}
tmo=${TMO:-900}
work=$(mktemp -d)
cp -r "$src_peers" "$work/peers"
lab=$work/peers
export STACKS=$work/stacks RESULTS=$work/results BERTH_ROOT=$work/berth-root
export BERTH=${BERTH:-$here/target/release/berth}
# shellcheck source=/dev/null
. "$lab/lib.sh"
started_dockerd=""
fwd_policy=$(iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3}')
ip_forward=$(sysctl -n net.ipv4.ip_forward)

# pc TOOL SIZE ARGS...: the tool's compose command for the size's project.
pc() {
  local tool=$1 st=scale-$2 p f
  shift 2
  p=$(proj "$st" "$tool") f=$STACKS/$st/compose.yaml
  case "$tool" in
    docker-compose-v2) timeout "$tmo" "$DOCKER" compose -p "$p" -f "$f" "$@" ;;
    podman-compose) timeout "$tmo" podman-compose -p "$p" -f "$f" "$@" ;;
    berth) timeout "$tmo" "$BERTH" -p "$p" -f "$f" "$@" ;;
  esac
}

peers_cleanup() {
  local t s
  for t in $tools; do for s in $sizes; do pc "$t" "$s" down -t 1 >/dev/null 2>&1 || true; done; done
  if [ -n "$started_dockerd" ]; then
    bash "$lab/engines.sh" stop >/dev/null 2>&1 || true
    [ -n "$fwd_policy" ] && iptables -P FORWARD "$fwd_policy" 2>/dev/null
    sysctl -qw net.ipv4.ip_forward="$ip_forward" || true
  fi
  rm -rf "$work"
}
trap peers_cleanup EXIT

# The stack: scale.sh's, one folder per size (lib.sh's layout: STACKS/<stack>/compose.yaml).
for s in $sizes; do
  mkdir -p "$STACKS/scale-$s"
  {
    echo "services:"
    for i in $(seq 1 "$s"); do
      printf '  s%03d:\n    image: lab/busybox:1\n    command: ["sleep", "1000000"]\n    init: true\n' "$i"
    done
  } >"$STACKS/scale-$s/compose.yaml"
done

img=$lab/images/lab-busybox-1.docker.tar
for t in $tools; do
  case "$t" in
    docker-compose-v2)
      if ! pgrep -x dockerd >/dev/null; then
        bash "$lab/engines.sh" start >/dev/null
        started_dockerd=1
      fi
      timeout "$tmo" "$DOCKER" load -q -i "$img" >/dev/null ;;
    podman-compose)
      timeout "$tmo" podman load -q -i "$img" >/dev/null ;;
    berth)
      timeout "$tmo" "$BERTH" load -q -i "$img" ;;
    *) echo "unknown tool $t (docker-compose-v2, podman-compose, berth)" >&2; exit 2 ;;
  esac
done

el() { echo "$2 - $1" | bc -l; }
# CPU-seconds of the given processes now, with their reaped children (utime + stime + cutime +
# cstime: the runtime runs reaped by containerd-shims, berth's runtime helpers).
cpu_of() {
  local hz p sum=0
  hz=$(getconf CLK_TCK)
  for p in "$@"; do
    sum=$(awk -v s="$sum" -v hz="$hz" '{printf "%.2f", s + ($14 + $15 + $16 + $17) / hz}' "/proc/$p/stat" 2>/dev/null || echo "$sum")
  done
  echo "$sum"
}
# timed CMD...: like lib.sh's run_timed (T_WALL, T_CPU: the command's CPU with its waited
# children, T_BUSY: machine busy CPU-s), for shell functions too (`times` of this shell).
# (`times` runs in this shell, not in a $(...) subshell, which would have its own counters.)
child_cpu() { awk 'NR == 2 {gsub(/[ms]/, " "); printf "%.2f", $1 * 60 + $2 + $3 * 60 + $4}' "$work/times"; }
timed() {
  local b0 t0 c0 rc=0
  b0=$(cpu_busy); t0=$(now); times >"$work/times"; c0=$(child_cpu)
  "$@" >>"$work/log" 2>&1 || rc=$?
  times >"$work/times"
  T_WALL=$(fsub "$(now)" "$t0"); T_BUSY=$(fsub "$(cpu_busy)" "$b0"); T_CPU=$(fsub "$(child_cpu)" "$c0")
  return $rc
}
raw=$work/raw.tsv
: >"$raw"
row() { echo -e "$1\t$2\t$3" >>"$raw"; }
for round in $(seq 1 "$rounds"); do
  for s in $sizes; do
    for t in $tools; do
      col=$t:$s
      # shellcheck disable=SC2046
      e0=$(cpu_of $(t_overhead_pids "$t"))
      timed pc "$t" "$s" up -d || { tail -20 "$work/log"; exit 1; }
      row "$col" up "$T_WALL"; row "$col" up_client_cpu "$T_CPU"; row "$col" up_machine_cpu "$T_BUSY"
      # shellcheck disable=SC2046
      row "$col" up_engine_cpu "$(echo "$(cpu_of $(t_overhead_pids "$t")) - $e0" | bc -l)"
      wait_running "$t" "scale-$s" "$s" 300 || echo "$col: only $(t_running "$t" "scale-$s") of $s running" >&2
      sleep 5
      # shellcheck disable=SC2046
      read -r n _ pss < <(mem_of $(t_overhead_pids "$t"))
      row "$col" engine_pss_kib "$pss"; row "$col" engine_procs "$n"
      if [ "$t" = berth ]; then
        sup=$(cat "$BERTH_ROOT/run/projects/$(proj "scale-$s" berth)/supervisor.pid")
        row "$col" sup_pss_kib "$(awk '/^Pss:/ {print $2}' "/proc/$sup/smaps_rollup")"
      fi
      t0=$(now); running=$(pc "$t" "$s" ps -q 2>/dev/null | grep -c . || true); t1=$(now)
      row "$col" ps "$(el "$t0" "$t1")"
      t0=$(now); pc "$t" "$s" logs --tail 1 >/dev/null 2>&1 || true; t1=$(now)
      row "$col" logs "$(el "$t0" "$t1")"
      names=$(awk '/^  s[0-9]+:$/ {sub(":", ""); print $1}' "$STACKS/scale-$s/compose.yaml" | tr '\n' ' ')
      t0=$(now)
      fails=$(pc "$t" "$s" exec -T s001 sh -c "f=0; for n in $names; do nslookup \$n >/dev/null 2>&1 || f=\$((f+1)); done; echo \$f" | tail -1)
      t1=$(now)
      row "$col" dns_all "$(el "$t0" "$t1")"; row "$col" dns_fail "$fails"
      timed pc "$t" "$s" down -t 1 || { tail -20 "$work/log"; exit 1; }
      row "$col" down "$T_WALL"; row "$col" down_machine_cpu "$T_BUSY"
      echo "round $round $col: $running in ps, $fails DNS failures, $(t_netleft "$t" "scale-$s") network(s) left" >&2
    done
  done
done

median() { sort -n | awk '{a[NR]=$1} END {if (!NR) exit; m=int((NR+1)/2); if (NR%2) print a[m]; else printf "%.4f\n", (a[m]+a[m+1])/2}'; }
med() { awk -F'\t' -v c="$1" -v m="$2" '$1 == c && $2 == m {print $3}' "$raw" | median; }
echo "scale bench, peers: medians of $rounds round(s); $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) at the end"
cols=""
for s in $sizes; do for t in $tools; do cols="$cols $t:$s"; done; done
printf '%-30s' figure
for c in $cols; do printf ' %22s' "$c"; done
echo
# metric, its label, its unit's format (s: seconds, MiB from KiB, n: a count)
while read -r m u label; do
  printf '%-30s' "$label"
  for c in $cols; do
    v=$(med "$c" "$m")
    if [ -z "$v" ]; then v=-
    elif [ "$u" = s ]; then v=$(printf '%.3f s' "$v")
    elif [ "$u" = MiB ]; then v=$(awk -v k="$v" 'BEGIN {printf "%.1f MiB", k / 1024}')
    fi
    printf ' %22s' "$v"
  done
  echo
done <<'EOF2'
up s up -d
up_client_cpu s up -d, client CPU (+children)
up_machine_cpu s up -d, machine busy CPU
up_engine_cpu s up -d, engine CPU
engine_pss_kib MiB engine PSS after up
engine_procs n engine processes counted
sup_pss_kib MiB berth supervisor PSS
ps s ps -q
logs s logs --tail 1
dns_all s every service looked up
dns_fail n names that failed
down s down
down_machine_cpu s down, machine busy CPU
EOF2
