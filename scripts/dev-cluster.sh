#!/usr/bin/env bash
# A 3-node Starling cluster on loopback, in one command, for development:
#
#   bash scripts/dev-cluster.sh
#
# Builds the binary (cargo build --release), writes three node configs into
# a temporary folder (fresh Raft state, a token secret and an API key made
# for this run, the demo page on every node, cluster.insecure = true on
# loopback), starts the nodes, waits until they form one Raft group, and
# prints every URL, the API key and a sample token. Ctrl-C (or SIGTERM)
# stops the nodes and removes the folder; if a node exits on its own, the
# others are stopped too and its last log lines are printed.
#
# Ports: node N (1..3) listens on BASE+N (WebSocket), BASE+100+N (HTTP API
# and demo page), BASE+200+N (peer links), BASE+300+N (gossip, UDP), with
# BASE = 7600: the ports of config/cluster/node-N.toml and, for node 1, of
# the dev node, so stop a dev node first or choose another base.
#
# Environment:
#   DEV_CLUSTER_BASE_PORT  BASE above (default 7600)
#   DEV_CLUSTER_BIN        the starling binary to run (default: build
#                          target/release/starling with cargo)
#   DEV_CLUSTER_DIR        keep configs, data and logs here (not removed)
#   STARLING_*             config overrides, applied to every node
set -euo pipefail
cd "$(dirname "$0")/.."

base=${DEV_CLUSTER_BASE_PORT:-7600}
if ! [[ "$base" =~ ^[0-9]+$ ]] || [ "$base" -lt 1024 ] || [ "$base" -gt 65100 ]; then
  echo "dev-cluster: DEV_CLUSTER_BASE_PORT must be a number from 1024 to 65100" >&2
  exit 2
fi
bin=${DEV_CLUSTER_BIN:-}
if [ -z "$bin" ]; then
  echo "dev-cluster: cargo build --release --bin starling"
  cargo build --release --quiet --bin starling
  bin="${CARGO_TARGET_DIR:-$PWD/target}/release/starling"
fi
[ -x "$bin" ] || { echo "dev-cluster: no starling binary at $bin" >&2; exit 1; }
command -v curl >/dev/null || { echo "dev-cluster: curl is needed to wait for the cluster" >&2; exit 1; }

if [ -n "${DEV_CLUSTER_DIR:-}" ]; then
  dir=$DEV_CLUSTER_DIR
  mkdir -p "$dir"
  keep_dir=1
else
  dir=$(mktemp -d -t starling-dev-cluster.XXXXXX)
  keep_dir=0
fi

# A secret and a key for this run only (hex of random bytes).
random_hex() { od -An -tx1 -N "$1" /dev/urandom | tr -d ' \n'; }
secret=$(random_hex 32)
api_key=$(random_hex 16)

port() { echo $((base + $1 + $2)); } # port OFFSET NODE
seeds="\"127.0.0.1:$(port 300 1)\", \"127.0.0.1:$(port 300 2)\", \"127.0.0.1:$(port 300 3)\""
for n in 1 2 3; do
  cat >"$dir/node-$n.toml" <<EOF
# Written by scripts/dev-cluster.sh: node $n of a loopback dev cluster.
[node]
name = "node-$n"
data_dir = "$dir/node-$n"

[listen]
client = "127.0.0.1:$(port 0 "$n")"
api = "127.0.0.1:$(port 100 "$n")"
peer = "127.0.0.1:$(port 200 "$n")"
gossip = "127.0.0.1:$(port 300 "$n")"

[cluster]
id = "dev-cluster"
seeds = [$seeds]
bootstrap_expect = 3
insecure = true                 # loopback only: no TLS between nodes

[auth]
jwt_hs256_secret = "$secret"
api_key = "$api_key"

[api]
demo = true                     # the demo chat on every node's API listener

[shutdown]
drain_ms = 500
deadline_ms = 3000

[log]
level = "info"                  # openraft stays at warn unless RUST_LOG says otherwise
format = "pretty"

[[namespaces]]
name = "chat"
presence = true
join_leave_events = true
publish = "members"
history_size = 500
history_ttl_ms = 300000
EOF
done

pids=()
stop() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    echo
    echo "dev-cluster: stopping the nodes"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  if [ "$keep_dir" = 0 ]; then
    rm -rf "$dir"
  else
    echo "dev-cluster: configs, data and logs kept in $dir"
  fi
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

for n in 1 2 3; do
  # STARLING_BIN and STARLING_TOKEN_SECRET are not config overrides.
  env -u STARLING_BIN -u STARLING_TOKEN_SECRET "$bin" --config "$dir/node-$n.toml" >"$dir/node-$n.log" 2>&1 &
  pids+=($!)
done

# Waits until every node is ready (in the Raft group, leader known) and
# node 1 lists all three; stops if a node exits first.
started=$(date +%s)
while :; do
  for i in 0 1 2; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "dev-cluster: node-$((i + 1)) exited; its last log lines ($dir/node-$((i + 1)).log):" >&2
      tail -n 20 "$dir/node-$((i + 1)).log" >&2
      exit 1
    fi
  done
  ready=0
  for n in 1 2 3; do
    curl -fsS -o /dev/null -m 1 "http://127.0.0.1:$(port 100 "$n")/readyz" 2>/dev/null && ready=$((ready + 1))
  done
  if [ "$ready" = 3 ]; then
    view=$(curl -fsS -m 1 -H "Authorization: Bearer $api_key" "http://127.0.0.1:$(port 100 1)/api/cluster" || true)
    [ "$(grep -o '"name":"node-[123]"' <<<"$view" | sort -u | wc -l)" = 3 ] && break
  fi
  if [ $(($(date +%s) - started)) -gt 60 ]; then
    echo "dev-cluster: the nodes did not form a cluster within 60 s; logs in $dir" >&2
    keep_dir=1
    exit 1
  fi
  sleep 0.2
done

token=$(env -u STARLING_TOKEN_SECRET "$bin" token --secret "$secret" --sub alice --rooms 'chat:*' --ttl 24h)
echo
echo "Starling dev cluster: 3 nodes on loopback, one Raft group ($("$bin" --version))."
for n in 1 2 3; do
  echo "  node-$n  WebSocket ws://127.0.0.1:$(port 0 "$n")/ws   HTTP API http://127.0.0.1:$(port 100 "$n")   Demo chat http://127.0.0.1:$(port 100 "$n")/   log $dir/node-$n.log"
done
echo "  API key:      $api_key"
echo "  JWT secret:   $secret"
echo "  Sample token (alice, chat:*, 24h): $token"
echo "  Cluster view: curl -H 'Authorization: Bearer $api_key' http://127.0.0.1:$(port 100 1)/api/cluster"
echo "  More tokens:  $bin token --secret $secret --sub bob --rooms 'chat:*'"
echo "Open the demo chat of two different nodes: messages and presence cross the cluster."
echo "The secret and the key are made for this run only. Ctrl-C stops the nodes."

# Runs until Ctrl-C, or until a node exits.
set +e
wait -n "${pids[@]}"
for i in 0 1 2; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    echo "dev-cluster: node-$((i + 1)) exited; its last log lines:" >&2
    tail -n 20 "$dir/node-$((i + 1)).log" >&2
  fi
done
exit 1
