#!/usr/bin/env bash
# Three-node figures for docs/benchmarks.md: joins committed per second
# across 3 nodes, and publish-to-deliver latency same-node vs cross-node.
# All three nodes are pinned to core 0, the load generator to core 1.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p starling -p starling-bench
BIN=target/release
SECRET=bench-secret-bench-secret-bench-secret
TOKEN=$($BIN/starling token --secret "$SECRET" --sub bench --rooms '*' --ttl 2h)
OUT=${OUT:-target/bench}
DATA=$(mktemp -d)
mkdir -p "$OUT"
PIDS=()
trap 'kill -9 "${PIDS[@]}" 2>/dev/null || true; rm -rf "$DATA"' EXIT

SEEDS='["127.0.0.1:7921","127.0.0.1:7922","127.0.0.1:7923"]'
for n in 1 2 3; do
  STARLING_NODE__NAME=bench-$n STARLING_NODE__DATA_DIR=$DATA/node-$n \
  STARLING_LISTEN__CLIENT=127.0.0.1:762$n STARLING_LISTEN__API=127.0.0.1:772$n \
  STARLING_LISTEN__PEER=127.0.0.1:782$n STARLING_LISTEN__GOSSIP=127.0.0.1:792$n \
  STARLING_CLUSTER__BOOTSTRAP_EXPECT=3 STARLING_CLUSTER__SEEDS="$SEEDS" \
  STARLING_LIMITS__REQUESTS_PER_SECOND=1000000.0 STARLING_LIMITS__REQUEST_BURST=1000000 \
  STARLING_LIMITS__MAX_ROOMS_PER_CONNECTION=100000 \
    ${PIN_SERVERS:-taskset -c 0} $BIN/starling --config bench/config/single.toml &
  PIDS+=($!)
done
for n in 1 2 3; do
  for _ in $(seq 200); do
    curl -sf http://127.0.0.1:772$n/readyz >/dev/null 2>&1 && break
    sleep 0.05
  done
done
echo "cluster ready"

${PIN_BENCH:-taskset -c 1} $BIN/starling-bench joins --token "$TOKEN" \
  --url ws://127.0.0.1:7621/ws,ws://127.0.0.1:7622/ws,ws://127.0.0.1:7623/ws \
  --conns ${JOIN_CONNS:-600} --joins-per-conn 20 > "$OUT/joins-3nodes.json"
python3 -c 'import json;d=json.load(open("'"$OUT"'/joins-3nodes.json"));print("joins across 3 nodes:", d["operations_per_second"], "/s, failed", d["failed"], "reply", d["reply_latency_ms"])'

for shape in same cross; do
  members=ws://127.0.0.1:7621/ws; [ $shape = cross ] && members=ws://127.0.0.1:7622/ws
  taskset -c 1 $BIN/starling-bench fanout --token "$TOKEN" --url $members --publish-url ws://127.0.0.1:7621/ws \
    --rooms 1 --members-per-room 100 --rates 200 --duration-secs 10 > "$OUT/latency-$shape-node.json"
  python3 -c 'import json;d=json.load(open("'"$OUT/latency-$shape-node.json"'"))["steps"][0];print("'$shape'-node publish->deliver:", d["deliveries_per_second"], "deliveries/s, missing", d["missing"], d["latency_ms"])'
done
