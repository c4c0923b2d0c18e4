#!/usr/bin/env bash
# Runs the single-node and three-node measurements (measure-core.sh,
# measure-cluster.sh) against two builds, alternating, so a change is
# compared with what it replaces in one sitting on the same machine.
# Usage: bash bench/compare-builds.sh DIR_A DIR_B [ROUNDS]
#   DIR_A, DIR_B: folders holding a `starling` and a `starling-bench`
#   binary (use the same starling-bench in both, so only the server varies).
# Output: one log per build and round in target/bench/compare/.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1
B=$2
ROUNDS=${3:-2}
OUT=target/bench/compare
mkdir -p "$OUT"
for round in $(seq "$ROUNDS"); do
  for dir in "$A" "$B"; do
    name=$(basename "$dir")
    echo "== round $round: $name"
    BIN=$dir OUT=$OUT/$name-$round bash bench/measure-core.sh 600 1200 | tee "$OUT/$name-$round-core.log"
    BIN=$dir OUT=$OUT/$name-$round JOIN_CONNS=300 bash bench/measure-cluster.sh | tee "$OUT/$name-$round-cluster.log"
  done
done
