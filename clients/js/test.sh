#!/usr/bin/env bash
# Every JS client test against the real `starling` binary (STARLING_BIN,
# default target/debug/starling): single node, 3-node cluster, and the demo
# page in headless Debian Chromium (CHROMIUM_BIN, default /usr/bin/chromium).
set -euo pipefail
cd "$(dirname "$0")"
export STARLING_BIN="${STARLING_BIN:-$(cd ../.. && pwd)/target/debug/starling}"
[ -x "$STARLING_BIN" ] || { echo "no starling binary at $STARLING_BIN (cargo build --bin starling)"; exit 1; }
[ -d node_modules ] || npm ci --no-audit --no-fund
# One file at a time: each starts its own nodes, and the machine may be small.
node --test --test-concurrency=1 test/*.test.js
