#!/usr/bin/env bash
# molt demo, on the embedded default: a local directory, no server, nothing left running.
#
# What it shows today: the same source built as v1.0.0 and v2.0.0 (version stamping),
# packaged reproducibly, listed in a region's manifest, and resolved the way a host
# would: upgrade, same-version skip, downgrade refused (exit 3) and allowed, and an
# unsupported platform refused.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
work=$(mktemp -d "${TMPDIR:-/tmp}/molt-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }

platform=linux-amd64
case "$(uname -m)" in
  aarch64 | arm64) platform=linux-arm64 ;;
esac
if [ -e /lib/ld-musl-x86_64.so.1 ] || [ -e /lib/ld-musl-aarch64.so.1 ]; then
  platform=${platform/linux-/linux-musl-}
fi

build() { # version
  step "build v$1 (MOLT_BUILD_VERSION=$1)"
  MOLT_BUILD_VERSION=$1 cargo build --quiet --release -p agent -p updater -p release-manifest
  mkdir -p "$work/bin/$1"
  cp target/release/agent target/release/updater "$work/bin/$1/"
  "$work/bin/$1/agent" --version
}

build 1.0.0
build 2.0.0
rm_tool="$work/bin/2.0.0/release-manifest"
cp target/release/release-manifest "$rm_tool"

for v in 1.0.0 2.0.0; do
  step "package v$v for $platform"
  "$rm_tool" package --version "$v" --platform "$platform" \
    --agent "$work/bin/$v/agent" --updater "$work/bin/$v/updater" --out "$work/dist" |
    tee "$work/package-$v.txt"
done

step "packaging is reproducible: package v2.0.0 again and compare bytes"
"$rm_tool" package --version 2.0.0 --platform "$platform" \
  --agent "$work/bin/2.0.0/agent" --updater "$work/bin/2.0.0/updater" --out "$work/dist-again" >/dev/null
cmp "$work/dist/molt-agent/2.0.0/molt-agent-$platform.tar.gz" \
  "$work/dist-again/molt-agent/2.0.0/molt-agent-$platform.tar.gz"
echo "identical"

step "write the region's manifest (us-east-1)"
entry() { # version status
  local sha size
  read -r sha size _ < <(grep " molt-agent/$1/" "$work/package-$1.txt")
  printf '{"Version":"%s","Checksum":"%s","Size":%s,"Status":"%s"}' "$1" "$sha" "$size" "$2"
}
cat >"$work/manifest.json" <<JSON
{"SchemaVersion":"1.0","Region":"us-east-1","Stable":"1.0.0","Packages":[{"Name":"molt-agent","Files":[
 {"Name":"molt-agent-$platform.tar.gz","AvailableVersions":[$(entry 1.0.0 Active),$(entry 2.0.0 Active)]}]}]}
JSON
cat "$work/manifest.json"

resolve() {
  echo "\$ release-manifest resolve $*"
  set +e
  "$rm_tool" resolve --manifest "$work/manifest.json" "$@"
  echo "(exit $?)"
  set -e
}

step "a host on v1.0.0 asks for latest"
resolve --platform "$platform" --current 1.0.0 --target latest
step "a host on v2.0.0 asks for latest"
resolve --platform "$platform" --current 2.0.0 --target latest
step "a host on v2.0.0 asks for 1.0.0 without --allow-downgrade"
resolve --platform "$platform" --current 2.0.0 --target 1.0.0
step "...and with it"
resolve --platform "$platform" --current 2.0.0 --target 1.0.0 --allow-downgrade
step "a windows host asks for latest"
resolve --platform windows-amd64 --current 1.0.0 --target latest

step "done; the demo left nothing running and removes $work"
