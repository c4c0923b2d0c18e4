#!/usr/bin/env bash
# The whole test suite: formatting, lints, every Rust test (unit,
# integration with real WebSocket clients, and real-process tests), the
# static checks of deploy/, the JS client's tests (real nodes, a real
# cluster, headless Chromium), and the Pusher compatibility tests (pusher-js,
# laravel-echo and the `pusher` server SDK against real nodes).
#
# What the suite needs beyond Rust is set up first by scripts/setup.sh when
# anything is missing (Debian packages only as root). A part that cannot
# run here says so in one line and the rest still runs, unless CI asks for
# it (CI_REQUIRE_NGINX, CI_REQUIRE_DEPLOY_TOOLS, CI_REQUIRE_JS; see
# scripts/setup.sh): then it fails.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== setup"
if bash scripts/setup.sh --check; then
  echo "-- everything is set up"
else
  bash scripts/setup.sh
fi

have() { command -v "$1" >/dev/null 2>&1; }

# Whether the JS tests in $1 can run; if not, one line (or, in CI, a failure).
js_ready() {
  local why=""
  if ! have node || ! have npm; then
    why="node and npm are not installed"
  elif [ ! -d "$1/node_modules" ]; then
    why="npm ci did not run in $1"
  fi
  [ -z "$why" ] && return 0
  if [ "${CI_REQUIRE_JS:-0}" = 1 ]; then
    echo "$1: $why (CI_REQUIRE_JS=1)" >&2
    exit 1
  fi
  echo "-- skipped: $1 ($why; see scripts/setup.sh)"
  return 1
}

echo "== cargo fmt --check"
cargo fmt --all -- --check
# `--all-features` turns on `faults` (link cuts for in-process cluster
# tests), which tests/cluster.rs and cluster/tests/membership.rs require;
# the first Clippy run lints the library as a release build has it.
echo "== cargo clippy"
cargo clippy --workspace --lib --bins -- -D warnings
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== the previous peer protocol's build (scripts/previous-build.sh)"
# For the rolling-upgrade test in tests/cluster_ops.rs (N-1 compatibility).
if previous=$(bash scripts/previous-build.sh); then
  export PREVIOUS_STARLING_BIN="$previous"
  echo "-- $previous"
elif [ "${CI_REQUIRE_PREVIOUS_BUILD:-0}" = 1 ]; then
  echo "the previous build could not be made (CI_REQUIRE_PREVIOUS_BUILD=1)" >&2
  exit 1
else
  echo "-- skipped: the rolling-upgrade test (the previous build could not be made)"
fi
echo "== cargo test"
cargo test --workspace --all-features
echo "== deploy/check.sh"
bash deploy/check.sh
echo "== JS client (clients/js)"
if js_ready clients/js; then
  cargo build --bin starling
  chromium_bin="${CHROMIUM_BIN:-/usr/bin/chromium}"
  if [ -x "$chromium_bin" ]; then
    bash clients/js/test.sh
  elif [ "${CI_REQUIRE_JS:-0}" = 1 ]; then
    echo "clients/js: no chromium at $chromium_bin (CI_REQUIRE_JS=1)" >&2
    exit 1
  else
    echo "-- skipped: the page tests, demo and admin (no chromium at $chromium_bin; see scripts/setup.sh)"
    # clients/js/test.sh without the page tests (package.test.js skips
    # its own browser test).
    (
      cd clients/js
      export STARLING_BIN="${STARLING_BIN:-$(cd ../.. && pwd)/target/debug/starling}"
      node --test --test-concurrency=1 $(ls test/*.test.js | grep -Ev '/(browser|admin)\.test\.js$')
    )
  fi
fi
echo "== Pusher compatibility (tests/pusher)"
if js_ready tests/pusher; then
  cargo build --bin starling
  bash tests/pusher/test.sh
fi
