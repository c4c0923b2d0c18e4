#!/usr/bin/env bash
# Tracing overhead: the same fan-out load (1 room x 1,000 members at 500
# msg/s; 1,000 rooms x 10 members at 4 msg/s per room, i.e. 4,000 publishes/s,
# the span-heavy case) against one release node with
# tracing off (no endpoint), on at ratio 1.0, and on at ratio 0.01, exporting
# over OTLP/HTTP to a local sink that reads and discards every request.
# Server pinned to core 0, load generator (and the sink) to core 1.
#
#   bash bench/trace-overhead.sh            # results in target/bench/trace/
#   ROUNDS=3 DURATION=10 bash bench/trace-overhead.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
OUT=target/bench/trace
mkdir -p "$OUT"
cargo build --release --quiet --bin starling -p starling -p starling-bench
BIN=target/release
SECRET=bench-secret-bench-secret-bench-secret
TOKEN=$("$BIN/starling" token --secret "$SECRET" --sub bench --rooms '*' --ttl 4h)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The sink: answers every OTLP POST with 200 after reading its body.
SINK_PORT=$(free_port)
taskset -c 1 python3 - "$SINK_PORT" <<'PY' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
PIDS+=($!)

run() { # run MODE SHAPE ROOMS MEMBERS RATE ROUND
  local mode=$1 shape=$2 rooms=$3 members=$4 rate=$5 round=$6
  local client api env=()
  client=$(free_port); api=$(free_port)
  case $mode in
    off) ;;
    on) env=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$SINK_PORT STARLING_TELEMETRY__SAMPLING_RATIO=1.0) ;;
    sampled) env=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$SINK_PORT STARLING_TELEMETRY__SAMPLING_RATIO=0.01) ;;
  esac
  env "${env[@]}" STARLING_LISTEN__CLIENT=127.0.0.1:$client STARLING_LISTEN__API=127.0.0.1:$api \
    taskset -c 0 "$BIN/starling" --config bench/config/single.toml 2>"$OUT/$mode-$shape-$round.log" &
  local pid=$!
  PIDS+=($pid)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$api/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  taskset -c 1 "$BIN/starling-bench" fanout --url "ws://127.0.0.1:$client/ws" --token "$TOKEN" \
    --namespace fan --rooms "$rooms" --members-per-room "$members" --rates "$rate" \
    --duration-secs "$DURATION" --server-pids "$pid" >"$OUT/$mode-$shape-$round.json" 2>/dev/null
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
  for mode in off on sampled; do
    run "$mode" 1x1000 1 1000 500 "$round"
    run "$mode" 1000x10 1000 10 4 "$round"
  done
done
python3 - "$OUT" <<'PY'
import json, sys, glob, os, collections
rows = collections.defaultdict(list)
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    mode, shape, _ = os.path.basename(path)[:-5].split("-")
    data = json.load(open(path))
    step = data["steps"][0] if "steps" in data else data
    rows[(shape, mode)].append(step)
print("| shape | tracing | round | deliveries/s | p99 ms | server CPU µs per delivery | deliveries/s per server core (1e6 / µs) | missing |")
print("|---|---|---|---|---|---|---|---|")
order = {"off": 0, "sampled": 1, "on": 2}
for (shape, mode), steps in sorted(rows.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
    for i, s in enumerate(steps, 1):
        print(f"| {shape} | {mode} | {i} | {s['deliveries_per_second']:,.0f} | {s['latency_ms']['p99']} "
              f"| {s['server_cpu_us_per_delivery']:.3f} | {1e6 / s['server_cpu_us_per_delivery']:,.0f} | {s['missing']} |")
PY
