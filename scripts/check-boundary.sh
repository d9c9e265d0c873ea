#!/usr/bin/env bash
# The host binaries carry no publishing code (SPEC §2): the normal dependency trees of
# `agent` and `updater` must not contain the AWS SDK's S3 client, the publisher crate
# (which holds the TUF editor, the signing keys and the object stores) or the release tool.
# `cargo tree` resolves features for the named package alone, as a release build of it
# does, so this needs no separate build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

forbidden=(aws-sdk-s3 molt-publish release-manifest)
status=0
for bin in agent updater; do
  tree=$(cargo tree --locked --offline -e normal -p "$bin" --prefix none --format '{p}' |
    sed 's/ (\*)$//; s/ (proc-macro)$//' | sort -u)
  count=$(wc -l <<<"$tree")
  found=0
  for crate in "${forbidden[@]}"; do
    if grep -q "^$crate v" <<<"$tree"; then
      echo "error: $bin's dependency tree contains $crate" >&2
      cargo tree --locked --offline -e normal -p "$bin" -i "$crate" >&2 || true
      found=1
    fi
  done
  # Crates present in two versions (what a version bump or a feature change might remove).
  dups=$(sed 's/ v[^ ]*$//; s/ v[^ ]* .*$//' <<<"$tree" | sort | uniq -d | tr '\n' ' ')
  if [ "$found" -eq 0 ]; then
    echo "$bin: $count crates in its normal dependency tree, none of: ${forbidden[*]}; in two versions: ${dups:-none}"
  else
    status=1
  fi
done
if [ "$status" -ne 0 ]; then
  echo "hint: the host binaries may depend on molt-schema, molt-host, molt-archive and molt-fetch; publishing code belongs in molt-publish" >&2
fi
exit "$status"
