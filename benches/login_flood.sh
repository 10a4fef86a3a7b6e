#!/usr/bin/env bash
# A login flood against `chat serve` (issue 10, finding 3): N concurrent failed logins of
# made-up usernames from 127.0.0.1, a legitimate login from 127.0.0.2 timed during it, and the
# server's RSS before, at its peak (VmHWM) and after 12 s idle. The server is pinned to core 0,
# the flood to core 1. Prints one JSON line.
#   benches/login_flood.sh target/release/chat 450 [chat serve flags...]
#   benches/login_flood.sh target/release/chat 450 --rate-ip-per-sec 0 --rate-credentials-per-sec 0
set -euo pipefail
bin=$1; n=$2; shift 2
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
taskset -c 0 "$bin" serve --listen 127.0.0.1:0 --data "$d/data" "$@" >"$d/out" 2>"$d/err" &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$d/out" 2>/dev/null && break; sleep 0.1; done
base=$(sed -n 's/^chat: listening on //p' "$d/out" | head -1)
[ -n "$base" ] || { echo "chat serve did not start:" >&2; cat "$d/err" >&2; exit 1; }
taskset -c 1 python3 "$(dirname "$0")/login_flood.py" "$base" "$pid" "$n"
kill "$pid"; wait "$pid" 2>/dev/null || true
