#!/usr/bin/env bash
# Three-node figures for docs/benchmarks.md: joins committed per second
# across 3 nodes, and publish-to-deliver latency same-node vs cross-node,
# with the servers' CPU time per delivery.
# All three nodes are pinned to core 0, the load generator to core 1.
# PEER_SECURITY=tls (default: mutual TLS between nodes and a sealed gossip,
# as production runs) or insecure (loopback development mode), to measure
# what TLS costs on the peer path.
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
DATA=$(mktemp -d)
mkdir -p "$OUT"
PIDS=()
trap 'kill -9 "${PIDS[@]}" 2>/dev/null || true; rm -rf "$DATA"' EXIT

SEEDS='["127.0.0.1:7921","127.0.0.1:7922","127.0.0.1:7923"]'
PEER_SECURITY=${PEER_SECURITY:-tls}
security_env() {
  if [ "$PEER_SECURITY" = insecure ]; then
    echo STARLING_CLUSTER__INSECURE=true
    return
  fi
  [ -f "$DATA/certs/ca.crt" ] || $BIN/starling cert create-ca --dir "$DATA/certs" >/dev/null
  $BIN/starling cert create-node "bench-$1" --dir "$DATA/certs" >/dev/null
  echo STARLING_CLUSTER__TLS__CA=$DATA/certs/ca.crt STARLING_CLUSTER__TLS__CERT=$DATA/certs/bench-$1.crt \
    STARLING_CLUSTER__TLS__KEY=$DATA/certs/bench-$1.key STARLING_CLUSTER__GOSSIP_KEY_FILE=$DATA/certs/gossip.key
}
echo "peer security: $PEER_SECURITY"
for n in 1 2 3; do
  security=$(security_env $n)
  # shellcheck disable=SC2086 # one word per variable
  env $security STARLING_NODE__NAME=bench-$n STARLING_NODE__DATA_DIR=$DATA/node-$n \
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

# CPU seconds (user + system) the three servers have used so far.
server_cpu() {
  local ticks=0
  for pid in "${PIDS[@]}"; do
    ticks=$((ticks + $(awk '{print $14 + $15}' /proc/$pid/stat)))
  done
  echo "$ticks $(getconf CLK_TCK)" | awk '{print $1 / $2}'
}

for shape in same cross; do
  members=ws://127.0.0.1:7621/ws; [ $shape = cross ] && members=ws://127.0.0.1:7622/ws
  cpu_before=$(server_cpu)
  taskset -c 1 $BIN/starling-bench fanout --token "$TOKEN" --url $members --publish-url ws://127.0.0.1:7621/ws \
    --rooms 1 --members-per-room 100 --rates ${LATENCY_RATE:-200} --duration-secs 10 > "$OUT/latency-$shape-node.json"
  cpu_after=$(server_cpu)
  python3 -c 'import json;d=json.load(open("'"$OUT/latency-$shape-node.json"'"))["steps"][0];cpu='"$cpu_after"'-'"$cpu_before"';print("'$shape'-node publish->deliver:", d["deliveries_per_second"], "deliveries/s, missing", d["missing"], d["latency_ms"], "server cpu per delivery: %.1f us" % (cpu * 1e6 / max(1, d["deliveries_per_second"] * 10)))'
done
