// The demo page (`/` on the API listener with `api.demo`) in headless
// Chromium against a real 3-node cluster: a newcomer's hint, names kept as
// typed, server publishes, the phone layout, two pages chatting through
// different nodes, and the one status line shown while a page's node is
// `kill -9`ed and until it is back. Each test uses its own room. The last
// test kills a node, so it runs last. Screenshots at desktop (1280x800) and
// phone (375x667) width go to target/demo-page/ at the repository root;
// their paths are printed.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { launchChromium, screenshotsIn } from "./chromium.js";
import { API_KEY, startNodes } from "./harness.js";

const screenshot = screenshotsIn("demo-page");
const WAIT = { timeout: 15000 };
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 375, height: 667 };

let cluster;
let browser;
before(async () => {
  cluster = await startNodes(3);
  browser = await launchChromium({ viewport: DESKTOP });
});
after(async () => {
  await browser?.close();
  await cluster?.stop();
});

/** Opens the demo page served by `node` for `room`; `urls` are the nodes it may connect to (default: all, its own first). */
async function openPage(node, room, { urls = [node, ...cluster.nodes.filter((n) => n !== node)], viewport = DESKTOP } = {}) {
  const page = await browser.context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error));
  page.errors = errors;
  await page.setViewportSize(viewport);
  const list = urls.map((n) => n.wsUrl).join(",");
  await page.goto(`${node.apiUrl}/?room=${encodeURIComponent(room)}&urls=${encodeURIComponent(list)}`);
  return page;
}

/** Joins as `name` on a page from openPage and waits until it may send, connected to `node`. */
async function join(page, name, node) {
  await page.fill("#name", name);
  await page.click("#go");
  await page.waitForFunction((n) => document.getElementById("node").textContent === `node ${n}`, node.name, WAIT);
  await page.waitForFunction(() => !document.getElementById("text").disabled, null, WAIT);
}

/** Opens the page served by `node` and joins as `name`; it connects to the first of `options.urls` (default: `node`). */
async function openChat(node, room, name, options) {
  const page = await openPage(node, room, options);
  await join(page, name, options?.urls?.[0] ?? node);
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#go");
}

function waitForLine(page, text) {
  return page.waitForFunction((t) => document.getElementById("log").textContent.includes(t), text, WAIT);
}

/** The log's lines: the sender (`who`, or null for a system line) and the text after it. */
function logLines(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll("#log > div")].map((div) => {
      const who = div.querySelector(".who")?.textContent ?? null;
      return { who, text: who === null ? div.textContent : div.textContent.slice(who.length), cls: div.className };
    }),
  );
}

function waitForMembers(page, names) {
  return page.waitForFunction(
    (want) => {
      const shown = [...document.querySelectorAll("#members li")].map((li) => li.textContent);
      return want.every((n) => shown.includes(n));
    },
    names,
    WAIT,
  );
}

/** True when nothing on the page is wider than its window (no horizontal scroll). */
function fitsWidth(page) {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
}

async function serverPublish(node, room, data) {
  const response = await fetch(`${node.apiUrl}/api/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ room, data }),
    signal: AbortSignal.timeout(5000),
  });
  assert.equal(response.status, 200, await response.text());
}

// Guarantee: a newcomer's first view says what to do (pick a name, open a
// second tab or another node's page), and the hint goes once they join.
test("the first load shows a hint that goes once the user joins", async () => {
  const [n1] = cluster.nodes;
  const page = await openPage(n1, "chat:hint");
  assert.equal(await page.isVisible("#hint"), true);
  const hint = await page.textContent("#hint");
  assert.match(hint, /Type a name/);
  assert.match(hint, /second tab/);
  assert.match(hint, /another\s+node's demo page/);
  assert.equal(await page.getAttribute("#hint-link", "target"), "_blank");
  assert.equal(await page.evaluate(() => document.getElementById("hint-link").href), page.url());
  await screenshot(page, "1-desktop-first-load.png");

  await join(page, "newcomer", n1);
  assert.equal(await page.locator("#hint").count(), 0, "the hint is gone after joining");
  assert.equal(await page.isVisible("#name"), false, "the joined name is in the header, not in an input");
  assert.equal(await page.textContent("#me"), "newcomer");
  assert.deepEqual(page.errors, []);
  await page.close();
});

// Guarantee: names are kept as typed (spaces and punctuation included) in
// the header, the member list and on other pages; a name the server does
// change is reported to the user, never changed silently.
test("names with spaces are kept as typed, and a changed name is reported", async () => {
  const [n1, n2] = cluster.nodes;
  const ann = await openChat(n1, "chat:names", "Ann Lee");
  const zoe = await openChat(n2, "chat:names", "Zoë O'Brien-Smith");
  assert.equal(await ann.textContent("#me"), "Ann Lee");
  await waitForMembers(ann, ["Ann Lee", "Zoë O'Brien-Smith"]);
  await waitForMembers(zoe, ["Ann Lee", "Zoë O'Brien-Smith"]);
  await say(zoe, "hi from zoe");
  await waitForLine(ann, "hi from zoe");
  assert.ok((await logLines(ann)).some((l) => l.who === "Zoë O'Brien-Smith" && l.text === "hi from zoe"));
  assert.ok(!(await logLines(ann)).some((l) => /changed your name/.test(l.text)));

  // A tab cannot reach a token (control characters could forge log
  // lines): the server drops it and the page says so.
  const tab = await openPage(n1, "chat:names");
  await tab.evaluate(() => {
    document.getElementById("name").value = "tab\there";
  });
  await tab.click("#go");
  await waitForLine(tab, 'the server changed your name from "tab\there" to "tabhere"');
  assert.equal(await tab.textContent("#me"), "tabhere");
  for (const page of [ann, zoe, tab]) {
    assert.deepEqual(page.errors, []);
    await page.close();
  }
});

// Guarantee: at phone width (375 px) the page never scrolls sideways, before
// and after joining, with long names and long unbroken messages; a message
// published through the server API without a `text` field shows its data
// as JSON, labelled as from the server API, never "undefined". Takes the
// desktop and phone screenshots of a chat.
test("the page fits a phone, and server publishes without text show their data", async () => {
  const [n1, n2, n3] = cluster.nodes;
  const room = "chat:layout";
  const phone = await openPage(n2, room, { viewport: PHONE });
  assert.equal(await fitsWidth(phone), true, "first load fits 375 px");
  await screenshot(phone, "3-phone-first-load.png");
  const long = "Maximilian Alexander Worthington";
  await join(phone, long, n2);
  const desk = await openChat(n1, room, "Ann Lee");
  await waitForMembers(phone, [long, "Ann Lee"]);

  await say(desk, `a long unbroken line: ${"x".repeat(120)}`);
  await say(desk, "hello phone, this is the desktop page on node-1");
  await waitForLine(phone, "hello phone, this is the desktop page on node-1");
  await say(phone, "hello desktop, the phone page on node-2 here");
  await waitForLine(desk, "hello desktop, the phone page on node-2 here");

  await serverPublish(n3, room, { headline: "deploy at 17:00", by: "ops" });
  await serverPublish(n3, room, { text: "a server message with text" });
  const json = JSON.stringify({ headline: "deploy at 17:00", by: "ops" });
  for (const page of [desk, phone]) {
    await waitForLine(page, "a server message with text");
    const lines = await logLines(page);
    assert.ok(lines.some((l) => l.who === "server API" && l.text === json && l.cls.includes("server")), JSON.stringify(lines));
    assert.ok(lines.some((l) => l.who === "server API" && l.text === "a server message with text"));
    assert.ok(!(await page.textContent("#log")).includes("undefined"));
  }
  assert.equal(await fitsWidth(phone), true, "the chat fits 375 px");
  await screenshot(desk, "2-desktop-chat.png");
  await screenshot(phone, "4-phone-chat.png");
  for (const page of [desk, phone]) {
    assert.deepEqual(page.errors, []);
    await page.close();
  }
});

// Guarantee: the page works across nodes (presence and messages both
// ways); a page whose node is killed re-joins on another node by itself and
// keeps chatting; a page that can only reach the killed node shows ONE
// status line, updated in place with the attempt count (no line per
// attempt in the log), until the node is back and it re-joins.
test("a page survives its node's kill -9, and shows one status line while it is down", async () => {
  const [n1, n2] = cluster.nodes;
  const room = "chat:failover";
  const ann = await openChat(n1, room, "ann");
  const ben = await openChat(n2, room, "ben");
  // Served by node-1, but may only connect to node-2.
  const cat = await openChat(n1, room, "cat", { urls: [n2] });
  await waitForMembers(ann, ["ann", "ben", "cat"]);
  await waitForMembers(ben, ["ann", "ben", "cat"]);
  assert.equal(await ann.textContent("#state"), "connected");
  assert.equal(await cat.isVisible("#status"), false, "no status line while connected");

  await say(ann, "hello from ann on node-1");
  await waitForLine(ben, "hello from ann on node-1");
  await say(ben, "hi ann, ben on node-2 here");
  await waitForLine(ann, "hi ann, ben on node-2 here");
  await waitForLine(cat, "hi ann, ben on node-2 here");
  const catLines = (await logLines(cat)).length;

  await n2.kill();
  await ben.waitForFunction(() => /re-joined chat:failover on node node-[13]/.test(document.getElementById("log").textContent), null, WAIT);
  assert.equal(await ben.textContent("#state"), "connected");
  assert.notEqual(await ben.textContent("#node"), "node node-2");
  assert.equal(await ben.isVisible("#status"), false, "the status line goes once re-joined");
  await say(ben, "ben is back after node-2 died");
  await waitForLine(ann, "ben is back after node-2 died");
  await say(ann, "welcome back ben");
  await waitForLine(ben, "welcome back ben");
  await waitForMembers(ben, ["ann", "ben"]);

  // cat retries node-2 only: one status line counts the attempts.
  await cat.waitForFunction(
    () => /^disconnected, retrying \(attempt ([3-9]|\d\d+), .+\): \d{4}/.test(document.getElementById("status").textContent),
    null,
    WAIT,
  );
  assert.equal(await cat.isVisible("#status"), true);
  assert.equal((await logLines(cat)).length, catLines, "no log line per attempt");
  assert.ok(!(await cat.textContent("#log")).includes("retrying"));
  await screenshot(cat, "5-desktop-reconnecting.png");
  await cat.setViewportSize(PHONE);
  assert.equal(await fitsWidth(cat), true, "the status line fits 375 px");
  await screenshot(cat, "6-phone-reconnecting.png");
  await cat.setViewportSize(DESKTOP);

  // node-2 back: cat re-joins, and the status line gives way to one log line.
  await cluster.restart(1);
  await cat.waitForFunction(
    () => /re-joined chat:failover on node node-2 \(after \d+ attempts?\)/.test(document.getElementById("log").textContent),
    null,
    { timeout: 30000 },
  );
  assert.equal(await cat.isVisible("#status"), false);
  assert.equal(await cat.textContent("#state"), "connected");
  const outageLines = (await logLines(cat)).filter((l) => /re-joined|disconnected|retrying/.test(l.text));
  assert.equal(outageLines.length, 1, `one log line for the whole outage: ${JSON.stringify(outageLines)}`);
  await say(cat, "cat is back on node-2");
  await waitForLine(ann, "cat is back on node-2");
  for (const page of [ann, ben, cat]) {
    assert.deepEqual(page.errors, []);
    await page.close();
  }
});
