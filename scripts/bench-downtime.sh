#!/usr/bin/env bash
# Agent downtime during a switch, measured by a poller outside the updater (every 2 ms:
# does state/agent.pid name a live process that agent/health.json names, at current's
# version?). Runs the real updater in direct mode SWITCHES times, alternating
# 1.0.0 -> 2.0.0 -> 1.0.0 ... with the test-agent stand-in, and prints each gap, its median
# and max, the updater's own agent_downtime_ms, and a bare restart of the same agent as the
# baseline measured in the same run. Goal: median <= 250 ms.
#
# Usage: scripts/bench-downtime.sh [SWITCHES] [SOAK]
#   SWITCHES  number of switches (default 20)
#   SOAK      the updater's --soak (default 200ms)
set -euo pipefail

switches=${1:-20}
soak=${2:-200ms}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=scripts/lib.sh
. "$repo_root/scripts/lib.sh"
make_work molt-bench

cargo build --quiet --release -p updater -p molt-tests \
  --bin updater --bin test-agent --example bench-downtime
TMPDIR="$work" "${CARGO_TARGET_DIR:-target}/release/examples/bench-downtime" "$switches" "$soak"
