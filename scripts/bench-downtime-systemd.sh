#!/usr/bin/env bash
# Agent downtime during a switch under a real systemd: molt installed by install.sh with the
# units of agent/deploy/ in a systemd-nspawn container (the test bed's root filesystem), then
# SWITCHES updates 1.0.0 -> 2.0.0 -> 1.0.0 ... by `updater --target-version`. A poller in
# the container (bash builtins only, no fork per look) records every gap in which no ready
# agent runs: agent/health.json says "ready" and its pid is a process of molt-agent.service's
# cgroup. The baseline, measured in the same run on the same machine: SWITCHES bare
# `systemctl restart molt-agent`. Prints each gap, the medians and the ratio. Goal: median
# switch gap <= 250 ms.
#
# Usage (as root, after `bash scripts/systemd-bed.sh` has built the root filesystem once):
#   scripts/bench-downtime-systemd.sh [SWITCHES] [SOAK]
#   SWITCHES  number of switches (default 20)
#   SOAK      the updater's --soak (default 200ms)
set -euo pipefail

switches=${1:-20}
soak=${2:-200ms}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=scripts/lib.sh
. "$repo_root/scripts/lib.sh"
make_work molt-bench-sd

die() {
  echo "bench-downtime-systemd.sh: error: $1" >&2
  exit 1
}
[ "$(id -u)" -eq 0 ] || die "needs root (systemd-nspawn)"
base=$(find "${CARGO_TARGET_DIR:-target}/systemd-bed" -maxdepth 2 -name .molt-bed-complete -printf '%h\n' 2>/dev/null | head -n 1)
[ -n "$base" ] || die "no container root filesystem yet: run bash scripts/systemd-bed.sh once"

platform=linux-amd64
case "$(uname -m)" in aarch64 | arm64) platform=linux-arm64 ;; esac
out=target/demo
packages=(-p agent -p updater -p release-manifest)
cargo build --quiet --locked --profile demo "${packages[@]}"
rm_tool="$work/release-manifest"
cp "$out/release-manifest" "$rm_tool"
for v in 1.0.0 2.0.0; do
  MOLT_BUILD_VERSION=$v cargo build --quiet --locked --profile demo "${packages[@]}" --bin agent --bin updater
  mkdir -p "$work/bin/$v"
  cp "$out/agent" "$out/updater" "$work/bin/$v/"
done

# The repository, as the demo makes it.
"$rm_tool" keys generate --out "$work/keys" >/dev/null
printf 'bucket = "bench-{region}"\n\n[[wave]]\nname = "all"\nregions = ["us-east-1"]\nbake = "0s"\n' >"$work/rollout.toml"
mkdir -p "$work/buckets/bench-us-east-1"
"$rm_tool" repo init --region us-east-1 --keys "$work/keys" --out "$work/init" >/dev/null
"$rm_tool" repo upload --plan "$work/rollout.toml" --directory "$work/buckets" --region us-east-1 \
  --repo "$work/init" --keys "$work/keys" >/dev/null
for v in 1.0.0 2.0.0; do
  "$rm_tool" package --version "$v" --platform "$platform" --agent "$work/bin/$v/agent" \
    --updater "$work/bin/$v/updater" --out "$work/dist-$v" >/dev/null
  "$rm_tool" publish --plan "$work/rollout.toml" --directory "$work/buckets" --wave 1 \
    --dist "$work/dist-$v" --version "$v" --keys "$work/keys" >/dev/null
done

# The machine.
rootfs="$work/rootfs"
cp -a "$base" "$rootfs"
share="$rootfs/usr/local/share/molt"
mkdir -p "$share/deploy" "$rootfs/etc/molt"
cp scripts/install.sh "$share/"
cp agent/deploy/* "$share/deploy/"
cp "$work/bin/1.0.0/updater" "$rootfs/root/updater"
cat >"$rootfs/etc/molt/agent.toml" <<TOML
root = "/opt/molt"
region = "us-east-1"
source = "file://$work/buckets/bench-us-east-1/"
trusted_root = "/etc/molt/root.json"

[updater]
service = "systemd"
soak = "$soak"
health_timeout = "30s"

[agent]
schedule = "rate(30 days)"
TOML
name="molt-bench-$$"
systemd-nspawn --quiet --boot --register=no --keep-unit --directory "$rootfs" \
  --machine="$name" --bind-ro="$work/buckets" --bind-ro="$work/keys" \
  </dev/null >"$work/console.log" 2>&1 &
nspawn=$!
leader=''
for _ in $(seq 600); do
  for child in $(cat "/proc/$nspawn/task/$nspawn/children" 2>/dev/null || true); do
    [ "$(cat "/proc/$child/comm" 2>/dev/null)" = systemd ] && leader=$child
  done
  if [ -n "$leader" ]; then
    state=$(nsenter -t "$leader" -a systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
  fi
  sleep 0.1
done
[ -n "$leader" ] || die "the machine did not boot: $(cat "$work/console.log")"
inside() { nsenter -t "$leader" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/bash -c "$1"; }
stop_machine() {
  inside 'systemctl poweroff' >/dev/null 2>&1 || true
  for _ in $(seq 100); do kill -0 "$nspawn" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$leader" "$nspawn" 2>/dev/null || true
}
trap 'stop_machine; stop_work' EXIT

inside "bash /usr/local/share/molt/install.sh --region us-east-1 --source 'file://$work/buckets/bench-us-east-1/' \
  --trusted-root $work/keys/root.json --updater-file /root/updater --service systemd --target-version 1.0.0" \
  >"$work/install.log" 2>&1 || die "install failed: $(cat "$work/install.log")"

# The poller: one line per gap, in microseconds.
cat >"$rootfs/root/poll.sh" <<'POLL'
#!/bin/bash
health=/opt/molt/agent/health.json
procs=/sys/fs/cgroup/systemd/system.slice/molt-agent.service/cgroup.procs
[ -e "$procs" ] || procs=/sys/fs/cgroup/system.slice/molt-agent.service/cgroup.procs
ready() {
  local line pid='' status=''
  while IFS= read -r line; do
    case "$line" in
      *'"pid":'*) pid=${line//[^0-9]/} ;;
      *'"status": "ready"'*) status=ready ;;
    esac
  done <"$health" 2>/dev/null || return 1
  [ "$status" = ready ] && [ -n "$pid" ] || return 1
  while IFS= read -r line; do [ "$line" = "$pid" ] && return 0; done <"$procs" 2>/dev/null
  return 1
}
down=''
while [ ! -e /root/poll.stop ]; do
  now=${EPOCHREALTIME/./}
  if ready; then
    if [ -n "$down" ]; then echo $((now - down)) >>/root/gaps; down=''; fi
  elif [ -z "$down" ]; then
    down=$now
  fi
done
POLL
chmod +x "$rootfs/root/poll.sh"

run_poller() { # label, command run SWITCHES times (with $target set)
  rm -f "$rootfs/root/gaps" "$rootfs/root/poll.stop"
  inside '/root/poll.sh' &
  local poller=$! target=2.0.0 i
  sleep 1
  for i in $(seq "$switches"); do
    inside "${2//\$target/$target}" >>"$work/$1.log" 2>&1 || die "$1 $i failed: $(tail -5 "$work/$1.log")"
    if [ "$target" = 2.0.0 ]; then target=1.0.0; else target=2.0.0; fi
    sleep 0.5
  done
  touch "$rootfs/root/poll.stop"
  wait "$poller" || true
  cp "$rootfs/root/gaps" "$work/$1.gaps" 2>/dev/null || : >"$work/$1.gaps"
}

median_ms() { sort -n "$1" | awk '{a[NR]=$1} END {if (NR==0) {print "n/a"; exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000}'; }
max_ms() { sort -n "$1" | tail -n 1 | awk '{printf "%.1f", $1/1000}'; }

# shellcheck disable=SC2016 # $target is replaced by run_poller
run_poller switch '/opt/molt/bin/updater --quiet --target-version $target --allow-downgrade'
run_poller restart 'systemctl restart molt-agent'

echo "switch gaps (ms): $(awk '{printf "%.1f ", $1/1000}' "$work/switch.gaps")"
echo "restart gaps (ms): $(awk '{printf "%.1f ", $1/1000}' "$work/restart.gaps")"
sw=$(median_ms "$work/switch.gaps")
rs=$(median_ms "$work/restart.gaps")
echo "switches: $(wc -l <"$work/switch.gaps") gaps, median $sw ms, max $(max_ms "$work/switch.gaps") ms"
echo "bare restarts: $(wc -l <"$work/restart.gaps") gaps, median $rs ms, max $(max_ms "$work/restart.gaps") ms"
awk -v a="$sw" -v b="$rs" 'BEGIN { if (b > 0) printf "switch / bare restart: %.2f\n", a / b }'
