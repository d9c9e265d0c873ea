# Shared by the demo and the benchmarks; source it, then call `make_work PREFIX` (and, for the
# install benchmarks, `fake_program OUT SEED SIZE_MIB`).
# shellcheck shell=bash

# Creates a temporary directory in $work (a physical path) and arranges that, on exit,
# every process whose command line names it is killed (twice: an updater may start an agent
# while the first pass runs) and the directory is removed. Release builds abort on panic,
# so a failed or interrupted run skips the destructors that would stop what it started.
make_work() { # prefix
  work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  work=$(cd "$work" && pwd -P)
  trap stop_work EXIT
}

stop_work() {
  local proc args
  for _ in 1 2; do
    for proc in /proc/[0-9]*; do
      mapfile -d '' args 2>/dev/null <"$proc/cmdline" || continue
      case "${args[*]}" in
        *"$work"/*) kill -KILL "${proc#/proc/}" 2>/dev/null || true ;;
      esac
    done
  done
  rm -rf "$work"
}

# A fake program of SIZE_MIB MiB that compresses as a real binary does: shared libraries and
# programs from the system, concatenated and cut to size. SEED picks where in the sorted list
# of files it starts, so two programs differ.
fake_program() { # out seed size_mib
  local out=$1 seed=$2 size_mib=$3
  find /usr/lib /usr/bin -type f -size +100k 2>/dev/null | sort | tail -n "+$seed" \
    | while IFS= read -r file; do cat "$file" 2>/dev/null || true; done \
    | head -c "$((size_mib * 1024 * 1024))" >"$out" || true
  if [ "$(stat -c %s "$out")" -lt "$((size_mib * 1024 * 1024))" ]; then
    echo "error: not enough files under /usr/lib and /usr/bin for ${size_mib} MiB" >&2
    exit 1
  fi
}
