#!/usr/bin/env bash
# Installs the built hookline into a temporary prefix, then configures, builds and runs a
# consumer project that finds it with find_package(hookline).
set -euo pipefail
src="$1"; build="$2"
work="$(mktemp -d /tmp/hookline-consumer.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$src/tests/consumer" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_BUILD_TYPE="${3:-RelWithDebInfo}" >/dev/null
cmake --build "$work/build" >/dev/null
"$work/build/consumer"
