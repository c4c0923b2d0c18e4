#!/usr/bin/env bash
# Side-by-side comparison (issue 6): Starling 1 node and 3 nodes, Socket.IO
# 4.8 one process and three processes with the Redis adapter, and the raw
# tokio-tungstenite broadcast server, all on loopback. Server processes
# (Redis included) are pinned to SERVER_CPU (default 0), the load generator
# to CLIENT_CPU (default 1). Installs what it needs (apt redis-server, npm ci
# for the Socket.IO peers), cleans up every process it started on exit.
#
# The Pusher peers (issue 13), not in the default list: Starling serving a
# Pusher app (bench/config/pusher.toml) on 1 and 3 nodes, and Sockudo (the
# Rust Pusher server; `cargo install sockudo --locked`, or SOCKUDO=path) on
# 1 process and on 3 processes with its Redis adapter on one redis-server.
#
# Usage: bash bench/compare.sh [--quick] [--peers "starling-1 socketio-1 raw starling-3 socketio-3-redis"] [--out DIR]
#        bash bench/compare.sh --pusher      # = --peers "starling-pusher-1 sockudo-1 starling-pusher-3 sockudo-3-redis"
#   --quick   smaller steps and shorter runs (under 5 minutes); figures are rough
#   --no-build  use the release binaries in the target dir as they are
# Results: DIR/<peer>/<scenario>.json and DIR/table.md (default DIR: target/bench/compare-<time>)
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
NO_BUILD=0
PEERS="starling-1 socketio-1 raw starling-3 socketio-3-redis"
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-build) NO_BUILD=1 ;;
    --peers) PEERS="$2"; shift ;;
    --pusher) PEERS="starling-pusher-1 sockudo-1 starling-pusher-3 sockudo-3-redis" ;;
    --out) OUT="$2"; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-target/bench/compare-$(date +%Y%m%d-%H%M%S)}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
STARTED=$(date +%s)

# ---- what each scenario does, full and quick --------------------------------
if [ "$QUICK" = 1 ]; then
  IDLE_STEPS=1000,5000,10000; SEARCH="--max-steps 2 --factor 2 --duration-secs 2 --grace-secs 1"
  SEARCH_FROM=${SEARCH_FROM:-40000}
  QUIESCE_SECS=5; FIXED_SECS=3; JOIN_CONNS=100; JOINS_PER_CONN=10; CHURN_SECS=2; KILL_SECS=6; KILL_AT=2
else
  IDLE_STEPS=1000,5000,10000,19000; SEARCH="--max-steps 6 --factor 2 --duration-secs 8 --grace-secs 3"
  QUIESCE_SECS=30; FIXED_SECS=20; JOIN_CONNS=600; JOINS_PER_CONN=20; CHURN_SECS=10; KILL_SECS=20; KILL_AT=5
fi
SEARCH_FROM=${SEARCH_FROM:-100000}

# ---- build and install --------------------------------------------------------
# CARGO_LOCK=FILE: build under `flock FILE` (a machine shared with other builds);
# --no-build: use the release binaries already built.
[ "$NO_BUILD" = 1 ] || ${CARGO_LOCK:+flock "$CARGO_LOCK"} cargo build --release -q -p starling -p starling-bench
TARGET=${CARGO_TARGET_DIR:-target}
WORK=$(mktemp -d)
# Copies, so a concurrent build of another tree cannot swap the binaries mid-run.
cp "$TARGET/release/starling" "$TARGET/release/starling-bench" "$WORK/"
BIN=$WORK
if [[ " $PEERS " == *"-redis "* ]] && ! command -v redis-server >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
fi
if [[ " $PEERS " == *" socketio"* ]]; then
  (cd bench/peers && npm ci --no-audit --no-fund --silent)
fi
SOCKUDO=${SOCKUDO:-$(command -v sockudo || echo "$HOME/.cargo/bin/sockudo")}
if [[ " $PEERS " == *" sockudo"* ]] && [ ! -x "$SOCKUDO" ]; then
  echo "sockudo not found: cargo install sockudo --locked (or set SOCKUDO=path)" >&2; exit 2
fi
mkdir -p "$OUT"

# ---- process management -------------------------------------------------------
ALL_PIDS=()
SERVER_PIDS=()
cleanup() {
  for pid in "${ALL_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
stop_servers() {
  for pid in "${SERVER_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  SERVER_PIDS=()
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # wait_port PORT: until it accepts TCP, at most 30 s
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; return 1
}
wait_ready() { # wait_ready API_PORT: Starling's /readyz, at most 30 s
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "starling on api port $1 not ready" >&2; return 1
}

SECRET=bench-secret-bench-secret-bench-secret
TOKEN=$("$BIN/starling" token --secret "$SECRET" --sub bench --rooms '*' --ttl 4h)
# The Pusher app of both Pusher servers (bench/config/pusher.toml, start_sockudo).
APP_ID=app-1; APP_KEY=app-key; APP_SECRET=bench-app-secret

# start_redis: a redis-server on core SERVER_CPU; sets REDIS_URL
start_redis() {
  local port; port=$(free_port)
  # Started directly (no shell function in between), so $! is the server's own pid.
  taskset -c "$SERVER_CPU" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --loglevel warning >"$OUT/redis.log" 2>&1 &
  SERVER_PIDS+=($!); ALL_PIDS+=($!)
  wait_port "$port" || return 1
  REDIS_URL=redis://127.0.0.1:$port
}

# start_starling N [pusher]: sets URLS (one per node) and SERVER_PIDS; with
# `pusher`, the nodes serve the Pusher app of bench/config/pusher.toml.
start_starling() {
  local n=$1 data seeds="" i config=bench/config/single.toml path=/ws
  [ "${2:-}" = pusher ] && { config=bench/config/pusher.toml; path=/app/$APP_KEY; }
  data=$WORK/data-$RANDOM
  local -a client api peer gossip
  for i in $(seq "$n"); do
    client[i]=$(free_port); api[i]=$(free_port); peer[i]=$(free_port); gossip[i]=$(free_port)
    seeds+="\"127.0.0.1:${gossip[i]}\","
  done
  URLS=()
  for i in $(seq "$n"); do
    local -a env=(STARLING_NODE__NAME=bench-$i STARLING_NODE__DATA_DIR=$data/node-$i
      STARLING_LISTEN__CLIENT=127.0.0.1:${client[i]} STARLING_LISTEN__API=127.0.0.1:${api[i]})
    # One node runs in single mode (no Raft, no peer links), as users run it.
    [ "$n" -gt 1 ] && env+=(STARLING_LISTEN__PEER=127.0.0.1:${peer[i]} STARLING_LISTEN__GOSSIP=127.0.0.1:${gossip[i]}
      STARLING_CLUSTER__BOOTSTRAP_EXPECT=$n "STARLING_CLUSTER__SEEDS=[${seeds%,}]")
    # Clusters run as production does: mutual TLS between nodes, sealed gossip.
    if [ "$n" -gt 1 ]; then
      [ -f "$data/certs/ca.crt" ] || "$BIN/starling" cert create-ca --dir "$data/certs" >/dev/null
      "$BIN/starling" cert create-node "bench-$i" --dir "$data/certs" >/dev/null
      env+=(STARLING_CLUSTER__TLS__CA=$data/certs/ca.crt STARLING_CLUSTER__TLS__CERT=$data/certs/bench-$i.crt
        STARLING_CLUSTER__TLS__KEY=$data/certs/bench-$i.key STARLING_CLUSTER__GOSSIP_KEY_FILE=$data/certs/gossip.key)
    fi
    env "${env[@]}" taskset -c "$SERVER_CPU" "$BIN/starling" --config "$config" &
    SERVER_PIDS+=($!); ALL_PIDS+=($!)
    URLS+=("ws://127.0.0.1:${client[i]}$path")
  done
  for i in $(seq "$n"); do wait_ready "${api[i]}" || return 1; done
  PROTOCOL=starling
  [ "${2:-}" = pusher ] && PROTOCOL=pusher
  return 0
}

# start_sockudo N [redis]: sets URLS and SERVER_PIDS (redis-server included).
# Defaults, except the limits a load test would hit (connection rate
# limiter, per-app connection cap, client/backend events per second,
# presence members) and metrics off (its metrics port would collide).
start_sockudo() {
  local n=$1 i port
  local -a env=(HOST=127.0.0.1 RATE_LIMITER_ENABLED=false RATE_LIMITER_WS_MAX_REQUESTS=1000000
    SOCKUDO_MAX_CONNECTIONS=100000 METRICS_ENABLED=false RUST_LOG=warn
    SOCKUDO_DEFAULT_APP_ID=$APP_ID SOCKUDO_DEFAULT_APP_KEY=$APP_KEY SOCKUDO_DEFAULT_APP_SECRET=$APP_SECRET
    SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=100000 SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES=true
    SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND=1000000 SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=1000000
    SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=1000000 SOCKUDO_DEFAULT_APP_MAX_PRESENCE_MEMBERS_PER_CHANNEL=100000)
  if [ "${2:-}" = redis ]; then
    # Sockudo refuses to start clustered with its node-local cache.
    start_redis || return 1
    env+=(ADAPTER_DRIVER=redis CACHE_DRIVER=redis REDIS_URL=$REDIS_URL)
  else
    # Its default queue is Redis at 127.0.0.1:6379: without one, every
    # disconnect logs a warning (and cleans up synchronously).
    env+=(QUEUE_DRIVER=memory)
  fi
  URLS=()
  for i in $(seq "$n"); do
    port=$(free_port)
    env "${env[@]}" PORT="$port" taskset -c "$SERVER_CPU" "$SOCKUDO" >"$OUT/sockudo-$port.log" 2>&1 &
    SERVER_PIDS+=($!); ALL_PIDS+=($!)
    URLS+=("ws://127.0.0.1:$port/app/$APP_KEY")
  done
  for url in "${URLS[@]}"; do
    port=${url##*:}; port=${port%%/*}
    # Its reason, e.g. a binary built without the `redis` feature (cargo
    # install sockudo --locked --features redis) for sockudo-3-redis.
    wait_port "$port" || { tail -n 1 "$OUT/sockudo-$port.log" >&2; return 1; }
  done
  PROTOCOL=pusher
}

# start_socketio N [redis]: sets URLS and SERVER_PIDS (redis-server included)
start_socketio() {
  local n=$1 redis_url="" i port
  if [ "${2:-}" = redis ]; then
    start_redis || return 1
    redis_url=$REDIS_URL
  fi
  URLS=()
  for i in $(seq "$n"); do
    port=$(free_port)
    PORT=$port REDIS_URL=$redis_url taskset -c "$SERVER_CPU" node bench/peers/socketio-server.js &
    SERVER_PIDS+=($!); ALL_PIDS+=($!)
    URLS+=("ws://127.0.0.1:$port")
  done
  for url in "${URLS[@]}"; do wait_port "${url##*:}" || return 1; done
  PROTOCOL=socketio
}

start_raw() {
  local port; port=$(free_port)
  taskset -c "$SERVER_CPU" "$BIN/starling-bench" raw-server --listen "127.0.0.1:$port" &
  SERVER_PIDS+=($!); ALL_PIDS+=($!)
  wait_port "$port" || return 1
  URLS=("ws://127.0.0.1:$port/ws")
  PROTOCOL=starling
}

start_peer() {
  case "$1" in
    starling-1) start_starling 1 ;;
    starling-3) start_starling 3 ;;
    socketio-1) start_socketio 1 ;;
    socketio-3-redis) start_socketio 3 redis ;;
    raw) start_raw ;;
    starling-pusher-1) start_starling 1 pusher ;;
    starling-pusher-3) start_starling 3 pusher ;;
    sockudo-1) start_sockudo 1 ;;
    sockudo-3-redis) start_sockudo 3 redis ;;
    *) echo "unknown peer $1" >&2; return 1 ;;
  esac
}

join_by_comma() { local IFS=,; echo "$*"; }

# bench PEER SCENARIO ARGS...: one measurement, JSON to OUT/PEER/SCENARIO.json
bench() {
  local peer=$1 scenario=$2; shift 2
  mkdir -p "$OUT/$peer"
  echo "== $peer: $scenario ($(( $(date +%s) - STARTED )) s in)"
  "$BIN/starling-bench" quiesce --server-pids "$(join_by_comma "${SERVER_PIDS[@]}")" --max-secs "$QUIESCE_SECS"
  if ! taskset -c "$CLIENT_CPU" "$BIN/starling-bench" "$@" >"$OUT/$peer/$scenario.json.tmp"; then
    echo "!! $peer: $scenario failed" | tee -a "$OUT/failures.txt"
    rm -f "$OUT/$peer/$scenario.json.tmp"
    return 0
  fi
  mv "$OUT/$peer/$scenario.json.tmp" "$OUT/$peer/$scenario.json"
}

run_peer() {
  local peer=$1 all pids first rest
  if ! start_peer "$peer"; then
    echo "!! $peer did not start" | tee -a "$OUT/failures.txt"
    stop_servers
    return 0
  fi
  all=$(join_by_comma "${URLS[@]}")
  pids=$(join_by_comma "${SERVER_PIDS[@]}")
  local common=(--protocol "$PROTOCOL" --token "$TOKEN" --app-secret "$APP_SECRET")
  # Pusher: fan-out over private channels (members subscribe with a signed
  # auth; the publisher sends client events, which are not echoed to it),
  # joins as presence subscriptions. The others: Starling's `fan` and `chat`.
  local fan=fan chat=chat
  [ "$PROTOCOL" = pusher ] && { fan=private-fan; chat=presence-chat; }
  # Idle memory is per server process: measured on single-process peers.
  if [ "${#URLS[@]}" = 1 ]; then
    bench "$peer" idle idle "${common[@]}" --url "$all" --server-pids "$pids" --steps "$IDLE_STEPS" \
      --settle-secs 5
    # Fresh server after tens of thousands of connections.
    stop_servers
    start_peer "$peer" || { echo "!! $peer did not restart" | tee -a "$OUT/failures.txt"; stop_servers; return 0; }
    all=$(join_by_comma "${URLS[@]}"); pids=$(join_by_comma "${SERVER_PIDS[@]}")
  fi
  local shape rooms members
  for shape in 1x10000 1000x10 100x100; do
    rooms=${shape%x*}; members=${shape#*x}
    bench "$peer" "fanout-$shape" fanout "${common[@]}" --namespace "$fan" --url "$all" --server-pids "$pids" \
      --rooms "$rooms" --members-per-room "$members" --search-from "$SEARCH_FROM" $SEARCH
  done
  # 10 rooms x 100 members x 20 msg/s = 20,000 deliveries/s.
  local fixed=(--namespace "$fan" --rooms 10 --members-per-room 100 --rates 20 --duration-secs "$FIXED_SECS" --server-pids "$pids")
  bench "$peer" latency-20k fanout "${common[@]}" --url "$all" "${fixed[@]}"
  bench "$peer" joins joins "${common[@]}" --namespace "$chat" --url "$all" --conns "$JOIN_CONNS" --joins-per-conn "$JOINS_PER_CONN" --leave
  bench "$peer" churn churn "${common[@]}" --url "$all" --workers 50 --duration-secs "$CHURN_SECS"
  if [ "${#URLS[@]}" -gt 1 ]; then
    first=${URLS[0]}; rest=$(join_by_comma "${URLS[@]:1}")
    bench "$peer" cross-same fanout "${common[@]}" --url "$first" --publish-url "$first" "${fixed[@]}"
    bench "$peer" cross-other fanout "${common[@]}" --url "$rest" --publish-url "$first" "${fixed[@]}"
    # kill -9 the last server process (not Redis) while publishing from the first.
    local victim=${SERVER_PIDS[${#SERVER_PIDS[@]}-1]}
    bench "$peer" kill fanout "${common[@]}" --namespace "$fan" --url "$all" --publish-url "$first" --rooms 10 \
      --members-per-room 100 --rates 20 --duration-secs "$KILL_SECS" --grace-secs 5 --server-pids "$pids" \
      --kill-pid "$victim" --kill-after-secs "$KILL_AT"
  fi
  stop_servers
}

for peer in $PEERS; do
  run_peer "$peer"
done

"$BIN/starling-bench" report "$OUT" | tee "$OUT/table.md"
echo
echo "results in $OUT ($(( $(date +%s) - STARTED )) s)"
