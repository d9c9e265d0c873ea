# Shared by the demo and the benchmarks; source it, then call `make_work PREFIX`.
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
