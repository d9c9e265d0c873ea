#!/usr/bin/env bash
# Release binaries carry no test hooks. The updater's MOLT_TEST_KILL_AT and the publisher's
# MOLT_TEST_KILL_AFTER_PUTS exist only under the `test-hooks` feature, which only the
# tests crate turns on; a binary built without it does not even contain their names.
#
#   scripts/check-release-hooks.sh [BINARY…]   (default: target/release/{agent,updater,release-manifest})
#
# With no binaries built yet, build them first:
#   cargo build --release --locked -p agent -p updater -p release-manifest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$#" -eq 0 ]; then
  set -- target/release/agent target/release/updater target/release/release-manifest
fi
status=0
for bin in "$@"; do
  if [ ! -f "$bin" ]; then
    echo "error: $bin does not exist" >&2
    echo "hint: cargo build --release --locked -p agent -p updater -p release-manifest" >&2
    exit 2
  fi
  if grep -a -q -e MOLT_TEST_KILL_AT -e MOLT_TEST_KILL_AFTER_PUTS "$bin"; then
    echo "error: $bin contains a test hook (built with the test-hooks feature?)" >&2
    status=1
  else
    echo "$bin: no test hooks"
  fi
done
exit "$status"
