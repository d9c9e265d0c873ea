#!/usr/bin/env bash
# Fuzzes the manifest parser, the version parser and the archive extractor for a bounded time:
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]     # every target (fuzz/fuzz_targets/), 60 s each
#
# The targets are cargo fuzz (libFuzzer) targets in fuzz/, a crate of its own that the main
# workspace never builds. They are built with AddressSanitizer and debug assertions (overflow
# checks included) on the stable toolchain: cargo fuzz passes -Z flags to rustc, which stable
# accepts under RUSTC_BOOTSTRAP=1, and stable ships the sanitizer runtimes. FUZZ_SANITIZER=none
# builds without ASan (faster, fewer bugs caught).
#
# cargo-fuzz is pinned and installed from crates.io into target/fuzz-tools (nothing outside the
# work tree); a second run finds it there. libFuzzer is C++: a C++ compiler must be there (as
# root with apt-get, the script installs g++).
#
# Each target starts from its seeds (fuzz/seeds/<target>/, and the manifest fixtures of
# release-manifest/tests/fixtures/) and from the corpus earlier runs grew (fuzz/corpus/<target>/,
# not committed), with its dictionary if it has one (fuzz/dicts/<target>.dict). For each target the script prints the number of executions, the corpus size
# and whether it found a crash; a crash's input is kept in fuzz/artifacts/<target>/ and the
# script then exits with 1. The full libFuzzer output is in fuzz/logs/<target>.log.
#
# Not part of .ci/run: a fuzzing run's findings depend on time and luck, the build takes minutes
# of its own (a separate crate, instrumented), and the machine has two cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(manifest version extract)
sanitizer=${FUZZ_SANITIZER:-address}

usage() {
  echo "usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]   (targets: ${ALL_TARGETS[*]})" >&2
  exit 2
}

seconds=60
if [[ $# -gt 0 ]]; then
  seconds=$1
  shift
fi
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || usage
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=("${ALL_TARGETS[@]}")
fi
for t in "${targets[@]}"; do
  [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || usage
done

# The pinned cargo-fuzz, installed once.
tools=target/fuzz-tools
cargo_fuzz=$tools/bin/cargo-fuzz
if [[ "$("$cargo_fuzz" --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $tools"
  cargo install --quiet --locked --root "$tools" cargo-fuzz --version "=$CARGO_FUZZ_VERSION"
fi

# libFuzzer (built by libfuzzer-sys) needs a C++ compiler.
if ! command -v "${CXX:-c++}" >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing g++ (libFuzzer is C++)"
    apt-get update -qq && apt-get install -y -qq g++ >/dev/null
  else
    echo "scripts/fuzz.sh: no C++ compiler (c++, g++ or clang++); install one (e.g. apt-get install g++)" >&2
    exit 1
  fi
fi

export RUSTC_BOOTSTRAP=1
fuzz_opts=(--sanitizer "$sanitizer" --debug-assertions)
if [[ $sanitizer != address ]]; then
  # Other flags, other artifacts: a target directory of their own keeps the ASan build.
  fuzz_opts+=(--target-dir "fuzz/target/$sanitizer")
fi
echo "-- building ${targets[*]} ($(rustc -V), cargo-fuzz $CARGO_FUZZ_VERSION, sanitizer $sanitizer)"
for t in "${targets[@]}"; do
  "$cargo_fuzz" fuzz build "${fuzz_opts[@]}" "$t"
done

# The extractor syncs what it writes: on tmpfs that costs nothing, on a disk it would be most of
# the run. Each run of the target makes (and removes) its own directory under TMPDIR.
scratch=""
if [[ -d /dev/shm && -w /dev/shm ]]; then
  scratch=$(mktemp -d /dev/shm/molt-fuzz.XXXXXX)
else
  scratch=$(mktemp -d)
fi
trap 'rm -rf "$scratch"' EXIT

mkdir -p fuzz/logs
summary=()
crashed=0
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  seeds=("fuzz/seeds/$t")
  if [[ $t == manifest ]]; then
    seeds+=(release-manifest/tests/fixtures)
  fi
  extra=()
  if [[ -f fuzz/dicts/$t.dict ]]; then
    extra+=(-dict="fuzz/dicts/$t.dict")
  fi
  log=fuzz/logs/$t.log
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  echo "-- fuzzing $t for ${seconds}s (load $(cut -d' ' -f1-3 /proc/loadavg))"
  status=0
  TMPDIR=$scratch "$cargo_fuzz" fuzz run "${fuzz_opts[@]}" "$t" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1 || true)
  files=$(find "$corpus" -type f | wc -l)
  bytes=$(find "$corpus" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
  after=$(find "fuzz/artifacts/$t" -type f | wc -l)
  if [[ $status -ne 0 || $after -gt $before ]]; then
    crashed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    artifact=${artifact#"$PWD/"}
    result="CRASH (exit $status) ${artifact:-see $log}"
    echo "   $t: crash; from $log:"
    grep -E -A 2 -e 'panicked at' -e '^==[0-9]+==ERROR' -e '^SUMMARY:' -e '^==[0-9]+== ERROR: libFuzzer' "$log" |
      head -n 30 | sed 's/^/   | /' || true
    if [[ -n "$artifact" ]]; then
      echo "   reproduce: RUSTC_BOOTSTRAP=1 $cargo_fuzz fuzz run ${fuzz_opts[*]} $t $artifact"
    fi
  else
    result="no crash"
  fi
  line=$(printf '%-9s %10s execs %6s/s  corpus %5s files %8s bytes  %-18s  %s' \
    "$t" "${execs:-?}" "${rate:-?}" "$files" "$bytes" "${cov:-}" "$result")
  echo "   $line"
  summary+=("$line")
done

echo "-- summary (${seconds}s per target, load now $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%s\n' "${summary[@]}"
exit "$crashed"
