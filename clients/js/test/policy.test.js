// The pure parts of the reconnect policy: the backoff formula and the
// close-code table (against the README's), checked without sockets.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { backoffDelay, DEFAULTS, POLICY, policyFor } from "../src/starling.js";

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

// Guarantee: the POLICY table and the README's reconnect policy table say
// the same thing, entry by entry: every README row's codes map to the
// action (and URL rotation) its text describes, every POLICY entry is in
// the README, and unknown codes get the "any other" row. The README table
// is parsed here, so the two cannot drift apart.
test("every POLICY entry matches the README table", () => {
  const readme = readFileSync(join(dirname(fileURLToPath(import.meta.url)), "../README.md"), "utf8");
  const section = readme.split("## Reconnect policy")[1].split("\n## ")[0];
  const rows = section
    .split("\n")
    .filter((line) => line.startsWith("| ") && !line.startsWith("| Code") && !line.startsWith("|---"))
    .map((line) => line.split("|").slice(1, -1).map((cell) => cell.trim()));
  assert.ok(rows.length >= 10, `README table rows: ${rows.length}`);
  /** The action a README "Action" cell describes. */
  const described = (action, byCode) => {
    if (/^like (\d+)/.test(action)) return byCode[/^like (\d+)/.exec(action)[1]];
    if (action.startsWith("`closed`")) return { action: "stop", rotate: false };
    if (action.startsWith("fresh token")) return { action: "refresh", rotate: /next URL/.test(action) };
    if (action.startsWith("wait `rateLimitedDelayMs`")) return { action: "slow", rotate: /next URL/.test(action) };
    if (action.startsWith("backoff")) {
      assert.ok(/next URL|same URL/.test(action), `README says which URL: ${action}`);
      return { action: "reconnect", rotate: /next URL/.test(action) };
    }
    throw new Error(`README action not understood: ${action}`);
  };
  const byCode = {};
  let other = null;
  for (const [codes, , action] of rows) {
    if (codes === "any other") {
      other = described(action, byCode);
      continue;
    }
    const keys = /^HTTP (\d+)/.test(codes) ? [`http${/^HTTP (\d+)/.exec(codes)[1]}`] : codes.split(",").map((c) => c.trim());
    for (const key of keys) {
      assert.ok(!(key in byCode), `${key} listed twice in the README`);
      byCode[key] = described(action, byCode);
    }
  }
  const actual = (entry) => ({ action: entry.action, rotate: entry.rotate });
  assert.deepEqual(Object.keys(byCode).sort(), Object.keys(POLICY).sort(), "the same codes in README and POLICY");
  for (const [code, entry] of Object.entries(POLICY)) assert.deepEqual(actual(entry), byCode[code], `code ${code}`);
  assert.ok(other, "README has an `any other` row");
  for (const unknown of [1004, 1014, 3000, 4002, 4999]) assert.deepEqual(actual(policyFor(unknown)), other, `unknown code ${unknown}`);
});
