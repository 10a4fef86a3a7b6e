#!/usr/bin/env bash
# Many WebSockets held by a process cluster on this machine (docs/performance.md, "Connections
# at scale"): redis, one app server, enough connection servers (<= 18,000 WebSockets each) and
# gateways (<= 9,000 each: a spliced WebSocket is two descriptors there), and one load
# generator process per gateway (the limit is 20,000 descriptors per process).
#
#   benches/connections.sh [TOTAL]      default 100000
#
# Every generator registers its users and opens its WebSockets; once all of them are open
# the script measures the cluster's resident memory, then lets every generator send one
# message per second per 100 connections (direct conversations, open loop) for SEND_SECS and
# measures the cluster's CPU over MEASURE_SECS of it; the generators then hold their
# WebSockets quiet for HOLD_SECS. Each generator's report (sends acked, pushes delivered,
# problems) follows. Needs redis-server; builds release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-100000}
send_secs=${SEND_SECS:-90}
hold_secs=${HOLD_SECS:-20}
measure_secs=${MEASURE_SECS:-20}
gateways=$(((total + 8999) / 9000))
# The gateways' placement spreads users unevenly (seen: 11,500 to 18,100 of 100,000 over six),
# so a connection server is planned for 14,000 of the 20,000 descriptors it may hold.
conns=$(((total + 13999) / 14000))
per=$((total / gateways))
rate=$(((per + 99) / 100))

die() { echo "connections.sh: $*" >&2; exit 1; }
command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install redis-server)"
ulimit -n 20000 || die "cannot raise the descriptor limit to 20000"
cargo build -q --locked --release -p chat -p chat-benches || die "build failed"

work=$(mktemp -d)
export CHAT_CLUSTER_DIR="$work/cluster" CHAT_BIN="$PWD/target/release/chat"
export CHAT_CLUSTER_CONNS=$conns CHAT_CLUSTER_GATEWAYS=$gateways CHAT_CONNECTIONS_MAX=20000
# Load-test settings, never a deployment's: cheap password hashes, no rate limits from one IP.
export CHAT_PASSWORD_MEMORY_KIB=64 CHAT_RATE_IP=0 CHAT_RATE_USER=0
# The registry refresh of a deployment (ci/cluster's default of 1 s suits its tests: 100,000
# connections re-asserted every second would be 100,000 Redis writes a second).
export CHAT_REGISTRY_REFRESH_MS=10000
cleanup() { ci/cluster down || true; kill $(jobs -p) 2>/dev/null || true; }
trap cleanup EXIT
ci/cluster up >"$work/up.out" || die "the cluster did not start (see $work)"
read -r -a urls <<<"$(sed -n 's/^gateways //p' "$work/up.out")"
[ ${#urls[@]} -gt 0 ] || urls=("$(tail -n 1 "$work/up.out")")
pids=$(cat "$CHAT_CLUSTER_DIR"/*.pid | tr '\n' ' ')
conn_pids=$(cat "$CHAT_CLUSTER_DIR"/conn*.pid | tr '\n' ' ')

rss_kib() { local sum=0; for p in $pids; do sum=$((sum + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $sum; }
cpu_ticks() { local sum=0; for p in $pids; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $sum; }
# WebSockets held: established TCP connections on the connection servers' own ports.
held() { local sum=0; for p in $conn_pids; do sum=$((sum + $(ls "/proc/$p/fd" | wc -l))); done; echo $sum; }

echo "cluster: $gateways gateways, $conns connection servers, 1 app server, redis; $gateways generators x $per WebSockets; $rate msg/s each"
rss_start=$(rss_kib)
start=$SECONDS
for i in $(seq 0 $((gateways - 1))); do
    target/release/loadgen --server "${urls[$i]}" --preset idle --connections "$per" --convs direct --directs-per-user 1 \
        --messages $((rate * send_secs)) --send-rate "$rate" --hold "${hold_secs}s" --duration-max 30m --wait-max 30s \
        --go-file "$work/go" \
        >"$work/lg$i.out" 2>&1 &
done
# Until every WebSocket is open (each connection server also holds a few other descriptors).
while [ "$(held)" -lt "$total" ]; do
    [ -z "$(jobs -pr)" ] && { tail -n 3 "$work"/lg*.out; die "the generators ended before $total WebSockets were open"; }
    [ $((SECONDS - start)) -gt 1500 ] && die "not all WebSockets open after 25 minutes: $(held)"
    sleep 2
done
echo "all $total WebSockets open after $((SECONDS - start)) s"
sleep 5
rss_full=$(rss_kib)
echo "cluster RSS $((rss_start / 1024)) MiB before, $((rss_full / 1024)) MiB with $total WebSockets: $(((rss_full - rss_start) * 1024 / total)) bytes per WebSocket (all processes, redis included)"
echo "  by process (MiB): $(for p in $pids; do
    printf '%s %s, ' "$(tr '\0' ' ' <"/proc/$p/cmdline" | awk '{print ($1 ~ /redis/) ? "redis" : $2}')" \
        $(($(awk '/^VmRSS/ {print $2}' "/proc/$p/status") / 1024)); done)"
touch "$work/go"
sleep 5
ticks0=$(cpu_ticks)
sleep "$measure_secs"
ticks1=$(cpu_ticks)
hz=$(getconf CLK_TCK)
echo "cluster CPU while $((rate * gateways)) msg/s flow: $(((ticks1 - ticks0) * 100 / hz / measure_secs))% of one core (over ${measure_secs} s)"
wait
for i in $(seq 0 $((gateways - 1))); do
    echo "generator $i:"
    grep -E "^(SENDS|PUSHES|problems)" "$work/lg$i.out" | sed 's/^/  /'
done
