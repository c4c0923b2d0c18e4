#!/usr/bin/env bash
# The whole test suite: formatting, lints, every Rust test (unit,
# integration with real WebSocket clients, and real-process tests), the
# static checks of deploy/, and the JS client's tests (real nodes, a real
# cluster, headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== deploy/check.sh"
bash deploy/check.sh
echo "== JS client (clients/js)"
cargo build --bin starling
bash clients/js/test.sh
