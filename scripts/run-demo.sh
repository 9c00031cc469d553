#!/usr/bin/env bash
# The README demo. Usage: scripts/run-demo.sh BIN_DIR   (scripts/demo.sh builds and calls it)
#
# Starts two webhook receivers (the second fails its first two requests) and the example
# content server on a SQLite outbox in a temporary directory, runs a short scenario with curl
# (two subscriptions with a filter and a custom payload; upload, modify, approve, trash),
# waits for the deliveries, prints what was delivered, retried and when, and stops everything
# it started.
set -euo pipefail

bin="${1:?usage: $0 BIN_DIR (the directory holding receiver, content_server and hookline)}"
for program in receiver content_server; do
  if [ ! -x "$bin/$program" ]; then
    echo "run-demo: $bin/$program not found; build first (scripts/build.sh)" >&2
    exit 2
  fi
done
command -v curl >/dev/null || { echo "run-demo: curl is needed (scripts/install-deps.sh)" >&2; exit 2; }

work="$(mktemp -d /tmp/hookline-demo.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
bold() { if [ -t 1 ]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }

wait_for_port() {
  for _ in $(seq 1 100); do
    if [ -s "$1" ]; then cat "$1"; return 0; fi
    sleep 0.1
  done
  echo "run-demo: $2 did not start; its log:" >&2
  cat "$3" >&2 || true
  exit 1
}

"$bin/receiver" --port 0 --port-file "$work/archive.port" --secret "$secret" \
  >"$work/archive.log" 2>&1 &
pids+=($!)
"$bin/receiver" --port 0 --port-file "$work/search.port" --secret "$secret" \
  --fail-first 2 --status 503 >"$work/search.log" 2>&1 &
pids+=($!)
"$bin/content_server" --port 0 --port-file "$work/cs.port" --store "sqlite:$work/content.db" \
  --allow-private --retry-schedule 1,2,4 --quiet >"$work/cs.log" 2>&1 &
pids+=($!)

archive_port="$(wait_for_port "$work/archive.port" "the archive receiver" "$work/archive.log")"
search_port="$(wait_for_port "$work/search.port" "the search receiver" "$work/search.log")"
cs_port="$(wait_for_port "$work/cs.port" "the content server" "$work/cs.log")"
cs="http://127.0.0.1:$cs_port"

bold "hookline demo"
echo "  content server      $cs (SQLite outbox, retry schedule 1 s, 2 s, 4 s)"
echo "  receiver 'archive'  http://127.0.0.1:$archive_port (verifies signatures)"
echo "  receiver 'search'   http://127.0.0.1:$search_port (verifies signatures, answers 503 twice first)"
echo

# call METHOD PATH [JSON]: prints the response body, fails on a transport error.
call() {
  local method="$1" path="$2" body="${3:-}"
  if [ -z "$body" ] && [ "$method" != GET ] && [ "$method" != DELETE ]; then body='{}'; fi
  if [ -n "$body" ]; then
    curl -sS -X "$method" -H 'Content-Type: application/json' -H 'X-User: alice' \
      --data-binary "$body" "$cs$path"
  else
    curl -sS -X "$method" -H 'X-User: alice' "$cs$path"
  fi
}

# step TEXT METHOD PATH [JSON]: runs one content operation and shows the events it caused.
step() {
  local text="$1"
  shift
  local reply events
  reply="$(call "$@")"
  events="$(printf '%s' "$reply" | sed -n 's/.*"events":\[\([^]]*\)\].*/\1/p' | tr -d '"' | sed 's/,/, /g')"
  printf '  %-44s -> %s\n' "$text" "${events:-$reply}"
}

bold "1. Subscriptions (POST /webhooks)"
echo "  an invalid one is refused with every bad field named:"
printf '    %s\n' "$(call POST /webhooks '{"id":"oops","url":"ftp://example.com","filter":{"path":"Docs","contentTypes":[{"name":"File","events":["Craete"]}]}}')"
call POST /webhooks "{
  \"id\": \"archive\", \"url\": \"http://127.0.0.1:$archive_port/archive\", \"secret\": \"$secret\",
  \"filter\": {\"path\": \"/Root/Content/Docs\", \"includeSubtypes\": true,
             \"contentTypes\": [{\"name\": \"File\", \"events\": [\"All\"]}]},
  \"payload\": \"{\\\"archivedBy\\\": \\\"@@currentuser@@\\\", \\\"file\\\": \\\"@@content.Path@@\\\"}\"
}" >/dev/null
echo "  archive: every event of Files (and Images) under /Root/Content/Docs, custom payload"
call POST /webhooks "{
  \"id\": \"search\", \"url\": \"http://127.0.0.1:$search_port/index\", \"secret\": \"$secret\",
  \"filter\": {\"path\": \"/Root/Content/Docs\",
             \"contentTypes\": [{\"name\": \"File\", \"events\": [\"Create\", \"Modify\", \"Approve\", \"MoveToTrash\"]}]},
  \"payload\": \"{\\\"action\\\": \\\"@@eventname@@\\\", \\\"document\\\": \\\"@@content.Path@@\\\"}\"
}" >/dev/null
echo "  search:  Create, Modify, Approve and MoveToTrash of Files under /Root/Content/Docs"
echo

bold "2. Content operations (the events each one published)"
step "create folder /Root/Content/Docs" POST /content '{"parent":"/Root/Content","name":"Docs","type":"Folder"}'
step "upload report.pdf (approval required)" POST /content '{"parent":"/Root/Content/Docs","name":"report.pdf","type":"File","approving":true,"fields":{"Description":"Q3 report"}}'
step "upload notes.txt" POST /content '{"parent":"/Root/Content/Docs","name":"notes.txt","type":"File"}'
step "upload photo.png (an Image is a File)" POST /content '{"parent":"/Root/Content/Docs","name":"photo.png","type":"Image"}'
step "modify notes.txt" PATCH /content/Root/Content/Docs/notes.txt '{"fields":{"Description":"meeting notes"}}'
step "approve report.pdf" POST /content/Root/Content/Docs/report.pdf/approve
step "trash notes.txt" POST /content/Root/Content/Docs/notes.txt/trash
step "upload elsewhere (outside the filter)" POST /content '{"parent":"/Root/Content","name":"misc.txt","type":"File"}'
echo

bold "3. Waiting for deliveries (the search receiver fails twice first; retries after 1 s, 2 s)"
for _ in $(seq 1 150); do
  a="$(call GET /webhooks/archive/stats)"
  s="$(call GET /webhooks/search/stats)"
  if printf '%s%s' "$a" "$s" | grep -q '"pending":[1-9]'; then
    sleep 0.2
  else
    break
  fi
done
echo

bold "4. What was delivered, retried and when (GET /webhooks/<id>/deliveries?format=text)"
call GET '/webhooks/archive/deliveries?format=text'
echo
call GET '/webhooks/search/deliveries?format=text'
echo

bold "5. What the receivers printed (time, webhook-id, event, path)"
echo "  archive:"
sed -n '2,$p' "$work/archive.log" | sed 's/^/    /'
echo "  search:"
sed -n '2,$p' "$work/search.log" | sed 's/^/    /'
echo
echo "Done; stopping the receivers and the content server."
