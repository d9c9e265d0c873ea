#!/usr/bin/env bash
# The systemd test bed: molt's production path under a real systemd (tests/tests/systemd.rs).
#
#   1. installs debootstrap, systemd-nspawn and rpm if they are missing (apt-get, as root);
#   2. builds a minimal Debian root filesystem with systemd, once: it is cached in
#      target/systemd-bed/base-<suite>-<packages' hash> (about 30-70 s and 240 MB the first time);
#   3. runs the tests, one at a time: each boots a copy of that root filesystem with
#      systemd-nspawn, installs molt with scripts/install.sh and the units of agent/deploy/,
#      and powers it off at the end, also when it fails;
#   4. on exit, stops any machine a killed test left running and removes their copies.
#
# Needs root (systemd-nspawn). Arguments go to the test runner, e.g. a test name filter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
  echo "systemd-bed.sh: error: $1" >&2
  [ $# -gt 1 ] && echo "systemd-bed.sh: hint: $2" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "the systemd test bed needs root (systemd-nspawn boots the containers)" \
  "run it as root, or in CI, which runs as root"

# rpm: rpmbuild builds the .rpm (scripts/package.sh), and rpm reads it and installs it into
# a machine's root filesystem; dpkg-deb builds the .deb.
if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null ||
  ! command -v nsenter >/dev/null || ! command -v rpmbuild >/dev/null ||
  ! command -v dpkg-deb >/dev/null; then
  command -v apt-get >/dev/null ||
    die "debootstrap, systemd-nspawn, nsenter, rpmbuild and dpkg-deb are needed, and there is no apt-get to install them" \
      "install debootstrap, systemd-container, util-linux, rpm and dpkg"
  echo "== installing debootstrap, systemd-container and rpm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    debootstrap systemd-container util-linux rpm dpkg >/dev/null
fi

# The container runs the binaries built here, so its C library must be this machine's:
# the same Debian release when this is Debian, else bookworm.
suite=bookworm
if [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091
  . /etc/os-release
  if [ "${ID:-}" = debian ] && [ -n "${VERSION_CODENAME:-}" ]; then suite=$VERSION_CODENAME; fi
fi

bed="${CARGO_TARGET_DIR:-target}/systemd-bed"
mkdir -p "$bed"
bed=$(cd "$bed" && pwd -P)
# ca-certificates: the store most images carry (a debug build's aws-config asserts one exists;
# tests/tests/updater.rs covers a host without it).
packages=systemd,systemd-sysv,dbus,ca-certificates
base="$bed/base-$suite-$(printf '%s' "$packages" | sha256sum | cut -c1-8)"
if [ ! -e "$base/.molt-bed-complete" ]; then
  echo "== building the containers' root filesystem (debootstrap $suite; cached in $base)"
  rm -rf "$base.tmp"
  started=$(date +%s)
  if ! debootstrap --variant=minbase --include="$packages" "$suite" "$base.tmp" \
    >"$bed/debootstrap.log" 2>&1; then
    tail -n 20 "$bed/debootstrap.log" >&2
    die "debootstrap failed (its log is $bed/debootstrap.log)" \
      "check that Debian's package mirror is reachable"
  fi
  touch "$base.tmp/.molt-bed-complete"
  rm -rf "$base"
  mv "$base.tmp" "$base"
  echo "built in $(($(date +%s) - started)) s"
fi

machines="$bed/machines"
# Stops every machine of the bed still running: its systemd (PID 1 inside, which takes the
# container down), then systemd-nspawn; then removes the machines' files.
stop_machines() {
  local pid child
  for pid in $(pgrep -f 'systemd-nspawn .*--machine=molt-bed-' || true); do
    for child in $(cat "/proc/$pid/task/$pid/children" 2>/dev/null || true); do
      kill -KILL "$child" 2>/dev/null || true
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$machines"
}
trap stop_machines EXIT
stop_machines

export MOLT_SYSTEMD_BASE="$base" MOLT_SYSTEMD_MACHINES="$machines"
echo "== tests under a real systemd (tests/tests/systemd.rs, one at a time)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --test systemd --run-ignored only --test-threads 1 "$@"
else
  cargo test --workspace --locked --test systemd -- --ignored --test-threads 1 "$@"
fi
