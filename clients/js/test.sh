#!/usr/bin/env bash
# Every JS client test against the real `starling` binary (STARLING_BIN,
# default target/debug/starling): single node, 3-node cluster, and the demo
# page in headless Debian Chromium (CHROMIUM_BIN, default /usr/bin/chromium),
# and the package as users install it (npm pack, npm install, esbuild).
set -euo pipefail
cd "$(dirname "$0")"
export STARLING_BIN="${STARLING_BIN:-$(cd ../.. && pwd)/target/debug/starling}"
[ -x "$STARLING_BIN" ] || { echo "no starling binary at $STARLING_BIN (cargo build --bin starling)"; exit 1; }
# `npm ci` unless it already ran for this package-lock.json (the stamp is
# the one scripts/setup.sh writes), so a changed lockfile is installed.
stamp=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.starling-setup 2>/dev/null)" != "$stamp" ]; then
  npm ci --no-audit --no-fund
  echo "$stamp" >node_modules/.starling-setup
fi
# One file at a time: each starts its own nodes, and the machine may be small.
node --test --test-concurrency=1 test/*.test.js
