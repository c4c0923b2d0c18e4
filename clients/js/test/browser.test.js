// The demo page in headless Chromium (Debian's `chromium`, driven by
// playwright-core; no browser is downloaded) against a real 3-node cluster:
// two pages served by two different nodes chat through the JS client, then
// one page's node is `kill -9`ed and that page re-joins on another node and
// keeps chatting. Screenshots go to clients/js/test-output/.

import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

import { startNodes } from "./harness.js";

const OUTPUT = join(dirname(fileURLToPath(import.meta.url)), "..", "test-output");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const WAIT = { timeout: 15000 };

let cluster;
let context;
let profile;
before(async () => {
  mkdirSync(OUTPUT, { recursive: true });
  cluster = await startNodes(3);
  profile = mkdtempSync(join(tmpdir(), "starling-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 900, height: 520 },
  });
});
after(async () => {
  await context?.close();
  await cluster?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

/** Opens the demo page served by `node`, listing every node (its own first), and joins as `user`. */
async function openChat(node, user) {
  const urls = [node, ...cluster.nodes.filter((n) => n !== node)].map((n) => n.wsUrl).join(",");
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error(`page error (${user}):`, error));
  await page.goto(`${node.apiUrl}/?urls=${encodeURIComponent(urls)}`);
  await page.fill("#name", user);
  await page.click("#go");
  await page.waitForFunction((name) => document.getElementById("node").textContent === `node ${name}`, node.name, WAIT);
  await page.waitForFunction(() => !document.getElementById("text").disabled, null, WAIT);
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#go");
}

function waitForLine(page, text) {
  return page.waitForFunction((t) => document.getElementById("log").textContent.includes(t), text, WAIT);
}

function waitForMembers(page, names) {
  return page.waitForFunction(
    (want) => want.every((n) => [...document.querySelectorAll("#members li")].some((li) => li.textContent.startsWith(n))),
    names,
    WAIT,
  );
}

// Guarantee: the demo page works across nodes (presence and messages both
// ways), shows the connection state, and a page whose node is killed
// re-joins on another node by itself and keeps chatting.
test("two pages chat across nodes, and one survives its node's kill -9", async () => {
  const [n1, n2] = cluster.nodes;
  const ann = await openChat(n1, "ann");
  const ben = await openChat(n2, "ben");
  await waitForMembers(ann, ["ann", "ben"]);
  await waitForMembers(ben, ["ann", "ben"]);
  assert.equal(await ann.textContent("#state"), "connected");

  await say(ann, "hello from ann on node-1");
  await waitForLine(ben, "hello from ann on node-1");
  await say(ben, "hi ann, ben on node-2 here");
  await waitForLine(ann, "hi ann, ben on node-2 here");
  await ann.screenshot({ path: join(OUTPUT, "1-chat-across-nodes.png") });

  await n2.kill();
  await ben.waitForFunction(() => /re-joined chat:lobby on node node-[13]/.test(document.getElementById("log").textContent), null, WAIT);
  assert.equal(await ben.textContent("#state"), "connected");
  assert.notEqual(await ben.textContent("#node"), "node node-2");
  await say(ben, "ben is back after node-2 died");
  await waitForLine(ann, "ben is back after node-2 died");
  await say(ann, "welcome back ben");
  await waitForLine(ben, "welcome back ben");
  await waitForMembers(ben, ["ann", "ben"]);
  await ben.screenshot({ path: join(OUTPUT, "2-after-node-killed.png") });
});
