#!/usr/bin/env bash
# Pusher Channels compatibility tests: pusher-js 8, laravel-echo and the
# `pusher` server SDK against the real `starling` binary (STARLING_BIN,
# default target/debug/starling).
set -euo pipefail
cd "$(dirname "$0")"
export STARLING_BIN="${STARLING_BIN:-$(cd ../.. && pwd)/target/debug/starling}"
[ -x "$STARLING_BIN" ] || { echo "no starling binary at $STARLING_BIN (cargo build --bin starling)"; exit 1; }
[ -d node_modules ] || npm ci --no-audit --no-fund
node --test --test-concurrency=1 test/*.test.js
