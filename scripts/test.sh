#!/usr/bin/env bash
# molt's tests: every unit, integration, snapshot and end-to-end test of the workspace (the
# README's test command, and what .ci/run runs).
#
# With cargo-nextest installed, each test runs as a process of its own and the test binaries
# run side by side (.config/nextest.toml); without it, `cargo test` runs the same tests one
# binary after another, which takes a few minutes longer. Arguments go to either, e.g.
# `bash scripts/test.sh --test publish` for one test file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked "$@"
  if [ "$#" -eq 0 ]; then
    # nextest does not run doctests.
    cargo test --workspace --locked --doc
  fi
else
  echo "cargo-nextest is not installed; running cargo test (one test binary at a time)" >&2
  cargo test --workspace --locked "$@"
fi
