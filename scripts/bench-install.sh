#!/usr/bin/env bash
# Times molt's one-pass download (stream → sha256 → extract into staging) against
# `curl | tee >(sha256sum) | tar -xz`, both fetching the same molt-agent archive from the same
# loopback HTTP server (the tests' file server), and against the floor of decompressing the
# archive file alone (`pigz -dc FILE > /dev/null`; `gzip -dc` when pigz is missing). Prints
# the ratios of the medians: molt/shell (goal <= 0.6) and molt/floor.
#
# Usage: [MOLT_BENCH_GUNZIP=gzip] scripts/bench-install.sh [SIZE_MIB] [RUNS]
#   SIZE_MIB  the size of each of the two fake programs (default 48; machine code from
#             /usr/lib, so it compresses about as a real binary does)
#   RUNS      runs of each (default 5)
set -euo pipefail

size_mib=${1:-48}
runs=${2:-5}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
work=$(mktemp -d "${TMPDIR:-/tmp}/molt-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

for tool in curl tar sha256sum gzip; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done
# The floor's decompressor: pigz, or MOLT_BENCH_GUNZIP when set (e.g. gzip).
if [ -n "${MOLT_BENCH_GUNZIP:-}" ]; then
  export MOLT_BENCH_GUNZIP
elif command -v pigz >/dev/null; then
  export MOLT_BENCH_GUNZIP=pigz
else
  echo "note: pigz is missing (apt-get install pigz); the floor is gzip -dc instead" >&2
  export MOLT_BENCH_GUNZIP=gzip
fi

# shellcheck source=scripts/lib.sh
. "$repo_root/scripts/lib.sh"
fake_program "$work/agent" 1 "$size_mib"
fake_program "$work/updater" 7 "$size_mib"

cargo build --quiet --release -p molt-tests --example bench-download
"${CARGO_TARGET_DIR:-target}/release/examples/bench-download" "$work/agent" "$work/updater" "$runs"
