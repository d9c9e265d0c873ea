#!/usr/bin/env bash
# The up-to-date check: `updater --target-version latest` on a host already on latest, over
# loopback HTTP (the tests' file server). Prints the median wall time of RUNS checks next to
# the baseline `updater --version` (process start-up) run interleaved in the same run, and
# the payload bytes fetched per check (from the server's request log).
#
# Usage: scripts/bench-uptodate.sh [RUNS]
#   RUNS  runs of each (default 20)
set -euo pipefail

runs=${1:-20}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=scripts/lib.sh
. "$repo_root/scripts/lib.sh"
make_work molt-bench

cargo build --quiet --release -p updater -p molt-tests \
  --bin updater --bin test-agent --example bench-uptodate
TMPDIR="$work" "${CARGO_TARGET_DIR:-target}/release/examples/bench-uptodate" "$runs"
