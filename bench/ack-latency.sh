#!/usr/bin/env bash
# Publish -> acknowledgement latency on the example 3-node cluster, for one
# or more builds in one sitting: bash bench/ack-latency.sh DIR [DIR...]
# (each DIR holds a `starling` binary; default target/release). Needs Node
# and the JS client's dev dependencies (clients/js: npm ci).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d clients/js/node_modules ] || (cd clients/js && npm ci --no-audit --no-fund)
export NODE_PATH=clients/js/node_modules
for dir in "${@:-target/release}"; do
  node bench/ack-latency.mjs "$dir/starling" "${PUBLISHES:-1000}"
done
