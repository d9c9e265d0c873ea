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
work=$(mktemp -d "${TMPDIR:-/tmp}/molt-bench.XXXXXX")
work=$(cd "$work" && pwd -P)

# Release builds abort on panic, so a failed or interrupted run skips the destructors that
# stop the agents it started: stop every process whose command line names our temporary
# directory (the agents run from there; an updater works on a host there), twice (an
# updater may have started an agent while the first pass ran).
cleanup() {
  local proc args
  for _ in 1 2; do
    for proc in /proc/[0-9]*; do
      mapfile -d '' args 2>/dev/null <"$proc/cmdline" || continue
      case "${args[*]}" in
        *"$work"/*) kill -KILL "${proc#/proc/}" 2>/dev/null || true ;;
      esac
    done
  done
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --quiet --release -p updater -p molt-tests \
  --bin updater --bin test-agent --example bench-uptodate
TMPDIR="$work" "${CARGO_TARGET_DIR:-target}/release/examples/bench-uptodate" "$runs"
