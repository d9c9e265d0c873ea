#!/usr/bin/env bash
# Random SIGKILLs of updates that meet a full disk at a random step, on a real tmpfs (root
# is needed to mount it): the `random_kills_with_a_full_disk` test of tests/tests/faults.rs
# with many runs. It fails on the first host left without a running agent from a `.valid`
# version while the disk is full, or without a healthy agent, or with a history record lost,
# once space returns; at the end it prints how the runs met the fault.
#
# Usage: scripts/fault-torture.sh [RUNS] [SEED]   (default 200 runs; about 5 s a run)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export MOLT_FAULT_RUNS=${1:-200}
if [ -n "${2:-}" ]; then
  export MOLT_FAULT_SEED=$2
fi
exec cargo nextest run --locked --workspace --test faults --no-capture \
  -E 'test(random_kills_with_a_full_disk)'
