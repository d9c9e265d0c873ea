#!/usr/bin/env bash
# Compares the install path (download + verify + unpack, as scripts/bench-install.sh times it)
# of two commits on the same machine in the same run: builds the bench-download example of
# each (in git worktrees under target/bench-worktrees/, sharing this checkout's target
# directory, so a second run rebuilds nothing), makes the same fake programs as
# bench-install.sh, and runs the two alternately, PAIRS times, RUNS runs each. Each run prints
# its own molt/shell ratio (the shell pipeline measured in the same run), so the before and
# after ratios can be compared across the machine's noise.
#
# Usage: scripts/bench-install-compare.sh BEFORE AFTER [PAIRS] [RUNS] [SIZE_MIB]
#   e.g. scripts/bench-install-compare.sh b1de89a HEAD 3 11
set -euo pipefail

before=${1:?usage: bench-install-compare.sh BEFORE AFTER [PAIRS] [RUNS] [SIZE_MIB]}
after=${2:?usage: bench-install-compare.sh BEFORE AFTER [PAIRS] [RUNS] [SIZE_MIB]}
pairs=${3:-3}
runs=${4:-11}
size_mib=${5:-48}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
work=$(mktemp -d "${TMPDIR:-/tmp}/molt-bench-compare.XXXXXX")
trap 'rm -rf "$work"' EXIT
export MOLT_BENCH_GUNZIP=${MOLT_BENCH_GUNZIP:-$(command -v pigz >/dev/null && echo pigz || echo gzip)}

build() { # rev -> path of its bench-download
  local rev=$1 sha dir
  sha=$(git rev-parse --short=12 "$rev^{commit}")
  dir=$target_dir/bench-worktrees/$sha
  if [ ! -d "$dir" ]; then
    git worktree add --detach --force "$dir" "$sha" >/dev/null
  fi
  (cd "$dir" && CARGO_TARGET_DIR=$target_dir cargo build --quiet --release -p molt-tests --example bench-download) >&2
  cp "$target_dir/release/examples/bench-download" "$work/bench-$sha"
  echo "$work/bench-$sha"
}
bin_before=$(build "$before")
bin_after=$(build "$after")

# shellcheck source=scripts/lib.sh
. "$repo_root/scripts/lib.sh"
fake_program "$work/agent" 1 "$size_mib"
fake_program "$work/updater" 7 "$size_mib"

for i in $(seq "$pairs"); do
  for side in before after; do
    if [ "$side" = before ]; then bin=$bin_before rev=$before; else bin=$bin_after rev=$after; fi
    echo "== pair $i, $side ($rev), load $(cut -d' ' -f1 /proc/loadavg)"
    "$bin" "$work/agent" "$work/updater" "$runs" | grep -E '^(molt|curl|gzip|pigz|ratio)'
  done
done
