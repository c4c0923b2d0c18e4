#!/usr/bin/env bash
# Builds the previous peer protocol's `starling` (the commit in
# tests/previous-build/COMMIT) from this repository's history, for the
# rolling-upgrade test (tests/cluster_ops.rs), and prints its path. Built
# once into target/previous-build/<commit>/; later runs print the same path.
# It shares this checkout's target dir, so only Starling's own crates are
# compiled again (the dependencies are the ones this build already has, if
# the lock files agree).
set -euo pipefail
cd "$(dirname "$0")/.."

commit=$(tr -d '[:space:]' < tests/previous-build/COMMIT)
out="target/previous-build/$commit"
if [ -x "$out/starling" ]; then
  echo "$PWD/$out/starling"
  exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "previous-build: commit $commit is not in this clone's history (a shallow clone?)" >&2
  exit 1
fi
src="target/previous-build/src-$commit"
rm -rf "$src"
mkdir -p "$src" "$out"
git archive "$commit" | tar -x -C "$src"
# The same target dir as this checkout's builds: cargo hard-links
# target/debug/starling again on every build, so this build's binary is
# back in place at the next `cargo build` or `cargo test`.
CARGO_TARGET_DIR="$PWD/target" cargo build --quiet --locked --bin starling --manifest-path "$src/Cargo.toml" >&2
cp target/debug/starling "$out/starling"
rm -f target/debug/starling
rm -rf "$src"
echo "$PWD/$out/starling"
