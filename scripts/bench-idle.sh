#!/usr/bin/env bash
# The agent's idle footprint: starts the release `agent run` (region set, a file:// source,
# the default schedule rate(14 days), IMDS disabled) and a `sleep 3600` side by side, waits
# SECONDS, then reads for both the resident set (VmRSS) and its peak (VmHWM) from
# /proc/<pid>/status and the CPU time (utime + stime, clock ticks, shown in ms) from
# /proc/<pid>/stat, and prints them next to each other with the ratios agent/sleep.
# Also shown: the resident set split into anonymous and file-backed pages, the threads,
# Pss and Private_Dirty from /proc/<pid>/smaps_rollup, the threads, the context switches
# (how often each woke up) and the on-CPU time in ns from /proc/<pid>/task/*/schedstat
# (threads alive at the end only). Goal: agent VmRSS <= 8 MiB.
#
# Usage: scripts/bench-idle.sh [SECONDS] [REPORT]
#   SECONDS  how long both idle before they are measured (default 60)
#   REPORT   a results sink to configure, e.g. s3://acme-molt-results/fleet (default none).
#            The host has no update history, so nothing is ever sent: this measures what
#            a configured sink costs an idle agent.
set -euo pipefail

secs=${1:-60}
report=${2:-}
case "$secs" in '' | *[!0-9]*) echo "error: SECONDS must be a whole number, got '$secs'" >&2; exit 2 ;; esac
goal_kib=$((8 * 1024))

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
work=$(mktemp -d "${TMPDIR:-/tmp}/molt-bench.XXXXXX")
work=$(cd "$work" && pwd -P)

agent_pid='' sleep_pid=''
cleanup() {
  local pid
  for pid in $agent_pid $sleep_pid; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --quiet --release -p agent
agent="${CARGO_TARGET_DIR:-target}/release/agent"
sleep_bin=$(command -v sleep)
# A binary just linked sits in the page cache as dirty pages until written back, and
# smaps would count its mapped text as Private_Dirty: write it out first.
sync "$agent"

# A host: its root, an empty repository directory as the source, and a config with no
# schedule (so the default, rate(14 days): no run is due while measured).
mkdir -p "$work/root" "$work/repo"
cat >"$work/agent.toml" <<EOF
root = "$work/root"
region = "us-east-1"
source = "file://$work/repo/"
EOF
if [ -n "$report" ]; then
  printf '\n[agent]\nreport = "%s"\n' "$report" >>"$work/agent.toml"
fi

# Both start from the same clean environment; the agent's log goes to a file.
clean_env=(env -u MOLT_LOG -u MOLT_ROOT -u MOLT_REGION -u MOLT_SOURCE -u MOLT_HEALTH_NONCE
  -u AWS_REGION -u AWS_DEFAULT_REGION -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY
  -u AWS_SESSION_TOKEN -u AWS_PROFILE
  AWS_EC2_METADATA_DISABLED=true
  AWS_SHARED_CREDENTIALS_FILE="$work/no-credentials" AWS_CONFIG_FILE="$work/no-config"
  MOLT_CONFIG="$work/agent.toml")
"${clean_env[@]}" "$agent" run </dev/null >"$work/agent.log" 2>&1 &
agent_pid=$!
"${clean_env[@]}" "$sleep_bin" 3600 </dev/null &
sleep_pid=$!
started=$(date +%s.%N)

# The agent must come up (health.json naming it) before the wait means anything.
for _ in $(seq 100); do
  grep -q "\"pid\": *$agent_pid\\b" "$work/root/agent/health.json" 2>/dev/null && break
  kill -0 "$agent_pid" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q "\"pid\": *$agent_pid\\b" "$work/root/agent/health.json" 2>/dev/null; then
  echo "error: the agent (pid $agent_pid) never reported ready; its log:" >&2
  cat "$work/agent.log" >&2
  exit 1
fi

load=$(cut -d' ' -f1 /proc/loadavg)
echo "agent $("$agent" --version | cut -d' ' -f2) and sleep idle for ${secs} s (load $load) ..." >&2
remaining=$(awk -v s="$secs" -v t0="$started" -v t1="$(date +%s.%N)" 'BEGIN { r = s - (t1 - t0); print (r > 0 ? r : 0) }')
sleep "$remaining"
for pid in "$agent_pid" "$sleep_pid"; do
  kill -0 "$pid" 2>/dev/null || { echo "error: process $pid exited while idle" >&2; cat "$work/agent.log" >&2; exit 1; }
done

tck=$(getconf CLK_TCK)
field() { awk -v k="$3:" '$1 == k { print $2 }' "/proc/$1/$2"; } # pid file key
cpu_ticks() { # utime + stime: fields 14 and 15 of /proc/<pid>/stat (after the command in parentheses)
  local stat rest
  stat=$(<"/proc/$1/stat")
  rest=${stat##*) }
  read -r -a f <<<"$rest"
  echo $((f[11] + f[12]))
}
oncpu_ns() { # the first field of each live thread's schedstat
  cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { print s }'
}
ctxt() { echo $(($(field "$1" status voluntary_ctxt_switches) + $(field "$1" status nonvoluntary_ctxt_switches))); }

declare -A v
for who in agent sleep; do
  pid=$agent_pid
  [ "$who" = sleep ] && pid=$sleep_pid
  v[$who.rss]=$(field "$pid" status VmRSS)
  v[$who.hwm]=$(field "$pid" status VmHWM)
  v[$who.anon]=$(field "$pid" status RssAnon)
  v[$who.file]=$(field "$pid" status RssFile)
  v[$who.pss]=$(field "$pid" smaps_rollup Pss)
  v[$who.dirty]=$(field "$pid" smaps_rollup Private_Dirty)
  v[$who.threads]=$(field "$pid" status Threads)
  v[$who.ticks]=$(cpu_ticks "$pid")
  v[$who.ctxt]=$(ctxt "$pid")
  v[$who.ns]=$(oncpu_ns "$pid")
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "—" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.2f MiB", k / 1024 }'; }
ms() { awk -v t="$1" -v h="$tck" 'BEGIN { printf "%d ms", t * 1000 / h }'; }
row() { printf '| %-34s | %14s | %14s | %11s |\n' "$1" "$2" "$3" "$4"; }

echo
echo "after ${secs} s idle${report:+, report = $report} (UTC $(date -u +%H:%M:%S), load at start $load, CLK_TCK $tck):"
row "" "agent run" "sleep 3600" "agent/sleep"
row "---" "---" "---" "---"
row "VmRSS (resident now)" "$(mib "${v[agent.rss]}")" "$(mib "${v[sleep.rss]}")" "$(ratio "${v[agent.rss]}" "${v[sleep.rss]}")"
row "VmHWM (resident peak)" "$(mib "${v[agent.hwm]}")" "$(mib "${v[sleep.hwm]}")" "$(ratio "${v[agent.hwm]}" "${v[sleep.hwm]}")"
row "  RssAnon (heap, stacks)" "$(mib "${v[agent.anon]}")" "$(mib "${v[sleep.anon]}")" "$(ratio "${v[agent.anon]}" "${v[sleep.anon]}")"
row "  RssFile (mapped program, libs)" "$(mib "${v[agent.file]}")" "$(mib "${v[sleep.file]}")" "$(ratio "${v[agent.file]}" "${v[sleep.file]}")"
row "Pss (shared pages divided)" "$(mib "${v[agent.pss]}")" "$(mib "${v[sleep.pss]}")" "$(ratio "${v[agent.pss]}" "${v[sleep.pss]}")"
row "Private_Dirty (not reclaimable)" "$(mib "${v[agent.dirty]}")" "$(mib "${v[sleep.dirty]}")" "$(ratio "${v[agent.dirty]}" "${v[sleep.dirty]}")"
row "CPU utime+stime" "$(ms "${v[agent.ticks]}") (${v[agent.ticks]} t)" "$(ms "${v[sleep.ticks]}") (${v[sleep.ticks]} t)" "$(ratio "${v[agent.ticks]}" "${v[sleep.ticks]}")"
row "on-CPU, live threads (schedstat)" "$(awk -v n="${v[agent.ns]}" 'BEGIN { printf "%.2f ms", n / 1e6 }')" "$(awk -v n="${v[sleep.ns]}" 'BEGIN { printf "%.2f ms", n / 1e6 }')" "$(ratio "${v[agent.ns]}" "${v[sleep.ns]}")"
row "threads" "${v[agent.threads]}" "${v[sleep.threads]}" ""
row "context switches (wake-ups)" "${v[agent.ctxt]}" "${v[sleep.ctxt]}" ""
echo
if [ "${v[agent.rss]}" -le "$goal_kib" ]; then
  echo "goal VmRSS <= 8 MiB: met ($(mib "${v[agent.rss]}"))"
else
  echo "goal VmRSS <= 8 MiB: NOT met ($(mib "${v[agent.rss]}"))"
fi
