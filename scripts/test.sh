#!/usr/bin/env bash
# The whole test suite: formatting, lints, every Rust test (unit,
# integration with real WebSocket clients, and real-process tests), the
# static checks of deploy/, the JS client's tests (real nodes, a real
# cluster, headless Chromium), and the Pusher compatibility tests (pusher-js,
# laravel-echo and the `pusher` server SDK against real nodes).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
# `--all-features` turns on `faults` (link cuts for in-process cluster
# tests), which tests/cluster.rs and cluster/tests/membership.rs require;
# the first Clippy run lints the library as a release build has it.
echo "== cargo clippy"
cargo clippy --workspace --lib --bins -- -D warnings
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== cargo test"
cargo test --workspace --all-features
echo "== deploy/check.sh"
bash deploy/check.sh
echo "== JS client (clients/js)"
cargo build --bin starling
bash clients/js/test.sh
echo "== Pusher compatibility (tests/pusher)"
bash tests/pusher/test.sh
