#!/usr/bin/env bash
# Publishing one release to 16 regions against publishing it to 1 region, on one local
# S3-compatible server (the tests' molt-s3). Prints the median wall time of RUNS publishes
# of each kind, run interleaved in the same run, and the ratio 16 regions / 1 region
# (goal: <= 2 with `concurrency = 16` in the plan; the default `concurrency = 4` is
# measured too), and the server's requests per publish.
#
# Usage: scripts/bench-publish.sh [RUNS]
#   RUNS  publishes of each kind (default 5)
#   MOLT_S3_LATENCY_MS=N in the environment: the server delays every request by N ms (a
#   stand-in for the round trip to a remote region; default none, which measures CPU)
#
# The first build of release-manifest in release mode (aws-sdk-s3) takes several minutes.
set -euo pipefail

runs=${1:-5}
case "$runs" in '' | 0 | *[!0-9]*) echo "error: RUNS must be a positive whole number, got '$runs'" >&2; exit 2 ;; esac

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=scripts/lib.sh
. "$repo_root/scripts/lib.sh"
make_work molt-bench

cargo build --quiet --release -p release-manifest -p molt-tests -p updater \
  --bin release-manifest --bin molt-s3 --bin test-agent --bin updater \
  --example bench-publish
# The server logs s3s's routing (one `resolved route op=…` line per request), from which
# the example counts the requests of each publish.
TMPDIR="$work" MOLT_S3_LOG="s3s::ops=debug" \
  "${CARGO_TARGET_DIR:-target}/release/examples/bench-publish" "$runs"
