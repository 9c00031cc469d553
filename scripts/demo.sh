#!/usr/bin/env bash
# Installs what is missing, builds, and runs the demo on the embedded default store.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh"
build="${HOOKLINE_BUILD_DIR:-$root/build}"
"$root/scripts/build.sh" "$build"
if [ -x "$root/scripts/run-demo.sh" ]; then
  exec "$root/scripts/run-demo.sh" "$build/bin"
fi
exec "$build/bin/quickstart"
