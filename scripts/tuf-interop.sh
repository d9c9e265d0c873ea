#!/usr/bin/env bash
# A molt region read by an independent TUF 1.0 client: python-tuf's ngclient, pinned, from
# PyPI into target/interop-venv (no root, nothing outside the tree).
#
#   bash scripts/tuf-interop.sh
#
# Builds a region with this tree's release-manifest (two releases, a recall, and a root
# rotation), serves it over HTTP on loopback, and runs scripts/tuf-interop.py on it with the
# first root as the trusted one: ngclient must follow the rotation, refresh, and download
# every target (checked by length and hashes), and Python's `cryptography` must load the
# generated keys. .ci/run runs it after the tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TUF_VERSION=7.0.1
CRYPTOGRAPHY_VERSION=50.0.2
# shellcheck source=scripts/pinned-venv.sh
source scripts/pinned-venv.sh
pinned_venv target/interop-venv "tuf==$TUF_VERSION cryptography==$CRYPTOGRAPHY_VERSION"
python=$PINNED_PYTHON

cargo build --locked --quiet -p release-manifest -p agent -p updater
rm_tool=target/debug/release-manifest
work=$(mktemp -d)
server=""
cleanup() {
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

"$rm_tool" -q keys generate --out "$work/keys" >/dev/null
"$rm_tool" -q keys generate --out "$work/new-keys" >/dev/null
"$rm_tool" -q repo init --region us-east-1 --keys "$work/keys" --out "$work/repo" >/dev/null
cp "$work/keys/root.json" "$work/first-root.json"
for version in 1.0.0 2.0.0; do
  for platform in linux-amd64 linux-arm64 windows-amd64; do
    "$rm_tool" -q package --version "$version" --platform "$platform" --agent target/debug/agent \
      --updater target/debug/updater --out "$work/dist-$version" >/dev/null
  done
  "$rm_tool" -q add --repo "$work/repo" --dist "$work/dist-$version" --version "$version" \
    --keys "$work/keys" >/dev/null
done
"$rm_tool" -q set-status --repo "$work/repo" --version 2.0.0 --status Deprecated \
  --keys "$work/keys" >/dev/null
"$rm_tool" -q root rotate --keys "$work/keys" --new-keys "$work/new-keys" --repo "$work/repo" >/dev/null
"$rm_tool" -q verify "$work/repo" --trusted-root "$work/first-root.json" --region us-east-1 >/dev/null

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$python" -m http.server --bind 127.0.0.1 --directory "$work/repo" "$port" >"$work/http.log" 2>&1 &
server=$!
for _ in $(seq 50); do
  if "$python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/metadata/timestamp.json')" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
"$python" scripts/tuf-interop.py "http://127.0.0.1:$port/metadata/" "http://127.0.0.1:$port/targets/" \
  "$work/first-root.json" "$work/client" \
  "$work/keys/targets.pem" "$work/new-keys/timestamp.pem" "$work/keys/root/root-1.pem"
