#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every Rust test (unit,
# integration with real WebSocket clients, and real-process tests), then the
# static checks of deploy/.
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
