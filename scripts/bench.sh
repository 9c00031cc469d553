#!/usr/bin/env bash
# Builds in Release, starts nginx on loopback as the receiver (measurements.md: never cpp-httplib
# for throughput) and a throwaway PostgreSQL, then runs the micro benchmarks and the pipeline load
# program. Results go to stdout; docs/performance.md records them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh"
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx >/dev/null
fi
build="${HOOKLINE_BENCH_BUILD_DIR:-$root/build-release}"
"$root/scripts/build.sh" "$build" -DCMAKE_BUILD_TYPE=Release -DHOOKLINE_BUILD_TESTS=OFF
work="$(mktemp -d /tmp/hookline-bench.XXXXXX)"
pgdir="$work/pg"
cleanup() {
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  "$root/scripts/postgres.sh" stop "$pgdir" || true
  rm -rf "$work"
}
trap cleanup EXIT
port="${HOOKLINE_BENCH_PORT:-18089}"
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / { return 204; }
  }
}
CONF
/usr/sbin/nginx -c "$work/nginx.conf"
sleep 0.5
pg="$("$root/scripts/postgres.sh" start "$pgdir")"
for b in "$build"/bin/*_bench; do
  echo "== $(basename "$b")"
  "$b" --benchmark_min_time=0.2 "$@"
done
echo "== pipeline_load"
HOOKLINE_BENCH_PG="$pg" "$build/bin/pipeline_load" --url "http://127.0.0.1:$port/hook" --work "$work"
