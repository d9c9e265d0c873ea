#!/usr/bin/env bash
# molt demo, on the embedded default: a local directory repository, no server to install,
# nothing left running.
#
#   1. build the same source once and stamp it as v1.0.0 and v2.0.0, and a broken v3.0.0
#      (an agent that passes its --version and check-config pre-flights but dies at start);
#   2. sign a region's repository and publish v1 to it, as CI publishes to a bucket;
#   3. install v1 into a temporary root, which starts the agent with a 3-second schedule;
#   4. publish v2: the agent launches the updater, which moves it to v2;
#   5. publish v3: the update fails its health check, is rolled back to v2 and quarantined;
#   6. `agent status` after each step.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=scripts/lib.sh
. "$repo_root/scripts/lib.sh"
make_work molt-demo

step() { printf '\n== %s\n' "$*"; }

platform=linux-amd64
case "$(uname -m)" in
  aarch64 | arm64) platform=linux-arm64 ;;
esac
if [ -e /lib/ld-musl-x86_64.so.1 ] || [ -e /lib/ld-musl-aarch64.so.1 ]; then
  platform=${platform/linux-/linux-musl-}
fi

# One build of the three programs in the `demo` profile (Cargo.toml: dependencies at
# opt-level 1, no debug info; the quickest from a fresh clone), then a re-stamp per version:
# only the binaries' main.rs reads MOLT_BUILD_VERSION, so each re-stamp recompiles two files
# and links. The same three packages are named each time, so cargo resolves the same
# features and reuses everything else.
packages=(-p agent -p updater -p release-manifest)
profile=(--profile demo)
out=target/demo
step "build agent, updater and release-manifest"
cargo build --quiet --locked "${profile[@]}" "${packages[@]}"
rm_tool="$work/bin/release-manifest"
mkdir -p "$work/bin"
cp "$out/release-manifest" "$rm_tool"

build() { # version
  step "stamp v$1 (MOLT_BUILD_VERSION=$1)"
  MOLT_BUILD_VERSION=$1 cargo build --quiet --locked "${profile[@]}" "${packages[@]}" --bin agent --bin updater
  mkdir -p "$work/bin/$1"
  cp "$out/agent" "$out/updater" "$work/bin/$1/"
  # Without symbols the packages are smaller; `strip` comes with the C toolchain.
  strip "$work/bin/$1/agent" "$work/bin/$1/updater" 2>/dev/null || true
  "$work/bin/$1/agent" --version
}

build 1.0.0
build 2.0.0

step "a broken v3.0.0: its agent answers --version and check-config, then exits at start"
mkdir -p "$work/bin/3.0.0"
cat >"$work/bin/3.0.0/agent" <<'SH'
#!/bin/sh
case "$*" in
  --version) echo "agent 3.0.0"; exit 0 ;;
  *check-config) exit 0 ;;
esac
echo "agent 3.0.0: broken on purpose for the demo" >&2
exit 1
SH
chmod +x "$work/bin/3.0.0/agent"
cp "$work/bin/2.0.0/updater" "$work/bin/3.0.0/updater"

started=$(date +%s)
step "keys, the rollout plan, and the us-east-1 repository in a local directory"
"$rm_tool" keys generate --out "$work/keys" >/dev/null
cat >"$work/rollout.toml" <<'TOML'
bucket = "demo-molt-{region}"

[[wave]]
name = "everyone"
regions = ["us-east-1"]
bake = "0s"
TOML
buckets="$work/buckets"
mkdir -p "$buckets/demo-molt-us-east-1"
"$rm_tool" repo init --region us-east-1 --keys "$work/keys" --out "$work/init" >/dev/null
"$rm_tool" repo upload --plan "$work/rollout.toml" --directory "$buckets" \
  --region us-east-1 --repo "$work/init" --keys "$work/keys"

publish() { # version
  "$rm_tool" package --version "$1" --platform "$platform" \
    --agent "$work/bin/$1/agent" --updater "$work/bin/$1/updater" --out "$work/dist-$1" >/dev/null
  "$rm_tool" publish --plan "$work/rollout.toml" --directory "$buckets" --wave 1 \
    --dist "$work/dist-$1" --version "$1" --keys "$work/keys"
}

step "publish v1.0.0"
publish 1.0.0

root="$work/host"
config="$work/agent.toml"
cat >"$config" <<TOML
root = "$root"
region = "us-east-1"
source = "file://$buckets/demo-molt-us-east-1/"
trusted_root = "$work/keys/root.json"

[updater]
service = "direct"
soak = "2s"
health_timeout = "10s"

[agent]
schedule = "rate(3 seconds)"
jitter = "0s"
TOML
export MOLT_CONFIG=$config AWS_EC2_METADATA_DISABLED=true

step "install v1.0.0 into $root (the updater's first install starts the agent)"
"$work/bin/1.0.0/updater" --quiet --target-version latest

status() {
  echo "\$ agent status"
  "$root/current/bin/agent" status | sed 's/^/  /'
}
status

wait_for() { # description, seconds, command...
  local what=$1 limit=$2
  shift 2
  local deadline=$(($(date +%s) + limit))
  until "$@"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "timed out waiting for $what" >&2
      echo "--- updater log" >&2
      cat "$root/agent/updater.log" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}
current_is() { [ "$(readlink "$root/current")" = "versions/$1" ]; }
history_has() { grep -q "\"to\": *\"$1\".*\"result\": *\"$2\"" "$root/state/history.jsonl" 2>/dev/null; }

step "publish v2.0.0; the agent's schedule launches the updater, which moves it to v2"
publish 2.0.0
wait_for "the agent to move to 2.0.0" 60 history_has 2.0.0 success
current_is 2.0.0
status

step "publish the broken v3.0.0; the update fails its health check and rolls back to v2"
publish 3.0.0
wait_for "the v3 update to roll back" 60 history_has 3.0.0 rolled_back
current_is 2.0.0
status
echo "\$ updater history"
"$root/bin/updater" history -n 3 | sed 's/^/  /'

step "done in $(($(date +%s) - started)) s after the build; the demo stops the agent and removes $work"
