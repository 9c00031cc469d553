#!/usr/bin/env bash
# Installs what is missing, builds, starts a throwaway PostgreSQL, runs the whole test suite.
# HOOKLINE_SANITIZE=1 builds and runs it under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh"
if [ "${HOOKLINE_SANITIZE:-0}" = "1" ]; then
  build="${HOOKLINE_BUILD_DIR:-$root/build-asan}"
  "$root/scripts/build.sh" "$build" -DCMAKE_BUILD_TYPE=Debug -DHOOKLINE_SANITIZE=ON -DHOOKLINE_BUILD_BENCH=OFF
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
else
  build="${HOOKLINE_BUILD_DIR:-$root/build}"
  "$root/scripts/build.sh" "$build"
fi
pgdir="$(mktemp -d /tmp/hookline-pg.XXXXXX)"
trap '"$root/scripts/postgres.sh" stop "$pgdir"' EXIT
export HOOKLINE_TEST_PG="$("$root/scripts/postgres.sh" start "$pgdir")"
export HOOKLINE_TEST_PG_DIR="$pgdir"
export HOOKLINE_BIN_DIR="$build/bin"
cd "$build"
ctest --output-on-failure --parallel "$(nproc)" --timeout 600 "$@"
