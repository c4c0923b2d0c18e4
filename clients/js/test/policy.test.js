// The pure parts of the reconnect policy: the backoff formula and the
// close-code table, checked without sockets.

import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, DEFAULTS, policyFor } from "../src/starling.js";

// Guarantee: attempt n waits uniformly in [0, min(max, min * 2^n)] (full jitter).
test("backoff is exponential with full jitter, capped", () => {
  const { minReconnectDelayMs: min, maxReconnectDelayMs: max } = DEFAULTS;
  assert.deepEqual([0, 1, 2, 3, 10, 60].map((n) => backoffDelay(n, min, max, () => 1)), [250, 500, 1000, 2000, 10000, 10000]);
  assert.equal(backoffDelay(5, min, max, () => 0), 0);
  for (let i = 0; i < 1000; i++) {
    const delay = backoffDelay(3, min, max);
    assert.ok(delay >= 0 && delay <= 2000);
  }
});

// Guarantee: the table sends each documented close code to its action;
// codes it does not know reconnect with backoff (docs/protocol.md).
test("close codes map to the documented actions", () => {
  const actions = Object.fromEntries(
    [1000, 1002, 1006, 1008, 1009, 1012, 4001, 4008, 4029, 4999, "http401"].map((c) => [c, policyFor(c).action]),
  );
  assert.deepEqual(actions, {
    1000: "stop",
    1002: "stop",
    1006: "reconnect",
    1008: "refresh",
    1009: "reconnect",
    1012: "reconnect",
    4001: "reconnect",
    4008: "reconnect",
    4029: "slow",
    4999: "reconnect",
    http401: "refresh",
  });
  assert.equal(policyFor(1012).rotate, true, "1012: try another node");
  assert.equal(policyFor(4999).rotate, true);
});
