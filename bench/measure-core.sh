#!/usr/bin/env bash
# Single-node figures for docs/benchmarks.md: server RSS per idle connection
# at 10k connections, and fan-out deliveries/s for one room of 1,000 members.
# The server is pinned to core 0, the load generator to core 1.
# Usage: bash bench/measure-core.sh [RATES...]   (default rates: 200 600 1000 1400)
set -euo pipefail
cd "$(dirname "$0")/.."
# BIN=DIR runs the binaries in DIR instead (no build), e.g. to compare two
# builds in one sitting.
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p starling -p starling-bench
  BIN=target/release
fi
SECRET=bench-secret-bench-secret-bench-secret
TOKEN=$($BIN/starling token --secret "$SECRET" --sub bench --rooms '*' --ttl 2h)
OUT=${OUT:-target/bench}
mkdir -p "$OUT"

start_server() {
  taskset -c 0 $BIN/starling --config bench/config/single.toml &
  SERVER=$!
  for _ in $(seq 100); do
    curl -sf http://127.0.0.1:7711/healthz >/dev/null 2>&1 && return
    sleep 0.05
  done
  echo "server did not start" >&2; exit 1
}
stop_server() { kill -TERM "$SERVER"; wait "$SERVER" || true; }
trap 'kill -9 ${SERVER:-0} 2>/dev/null || true' EXIT

start_server
taskset -c 1 $BIN/starling-bench idle --url ws://127.0.0.1:7611/ws --token "$TOKEN" \
  --steps 10000 --server-pids "$SERVER" > "$OUT/idle-10k.json"
stop_server
echo "idle 10k: $(python3 -c 'import json;d=json.load(open("'"$OUT"'/idle-10k.json"));print(d["bytes_per_connection_slope"],"bytes/conn")')"

start_server
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(200 600 1000 1400)
for rate in "${RATES[@]}"; do
  taskset -c 1 $BIN/starling-bench fanout --url ws://127.0.0.1:7611/ws --token "$TOKEN" \
    --rooms 1 --members-per-room 1000 --rates "$rate" --duration-secs 10 --server-pids "$SERVER" > "$OUT/fanout-1000-$rate.json"
  python3 - "$OUT/fanout-1000-$rate.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["steps"][0]
l = d["latency_ms"]
print(f'fanout 1x1000 @{d["rate_per_room"]:.0f}/s: {d["deliveries_per_second"]:.0f} deliveries/s, '
      f'missing {d["missing"]}, p50 {l["p50"]} ms, p99 {l["p99"]} ms, max {l["max"]} ms, '
      f'server cpu {d["server_cpu_seconds"]:.2f} s')
PY
done
stop_server
