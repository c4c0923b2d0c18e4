// The admin dashboard (`/admin` on the API listener) in headless Chromium
// (Debian's `chromium`, driven by playwright-core) against a real 3-node
// cluster: the page shows nothing until the API key is typed, then the
// cluster map, a room a client made (with a hostile name, shown as text),
// live charts; after one node is `kill -9`ed it shows that node down and its
// room gone. Screenshots at desktop (1280x800) and phone (390x844) width go
// to target/admin-dashboard/ at the repository root; their paths are printed.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";

import { StarlingClient } from "../src/starling.js";
import { launchChromium, screenshotsIn } from "./chromium.js";
import { API_KEY, mintToken, startNodes } from "./harness.js";

const screenshot = screenshotsIn("admin-dashboard");
const WAIT = { timeout: 20000 };
/** A room name a client controls: markup in it must stay text. */
const HOSTILE_ROOM = 'chat:<img/src=x/onerror=window.__xss=1>"&';

let cluster;
let browser;
let context;
before(async () => {
  cluster = await startNodes(3);
  browser = await launchChromium({ viewport: { width: 1280, height: 800 } });
  context = browser.context;
});
after(async () => {
  await browser?.close();
  await cluster?.stop();
});

/** The node cards of the cluster map: name -> state. */
function nodeStates(page) {
  return page.evaluate(() =>
    Object.fromEntries([...document.querySelectorAll("#nodes .node")].map((n) => [n.dataset.node, n.dataset.state])),
  );
}

// Guarantee: with the API key (never in a URL), the dashboard of any node
// shows the whole cluster and its rooms, escapes what clients named, and
// shows a killed node as down; it fits a phone's width.
test("the admin dashboard shows the cluster, a client's room, and a killed node down", async () => {
  const [n1, n2, n3] = cluster.nodes;
  const requests = [];
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error));
  page.on("request", (request) => requests.push(request.url()));
  await page.goto(`${n1.apiUrl}/admin`);

  // Nothing but the key prompt before the key is given.
  assert.equal(await page.isVisible("#login"), true);
  assert.equal(await page.isVisible("#dashboard"), false);
  await page.fill("#key", "not-the-key");
  await page.click("#connect");
  await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("refused"), null, WAIT);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, "a refused key is not kept");

  await page.fill("#key", API_KEY);
  await page.click("#connect");
  await page.waitForFunction(() => document.querySelectorAll('#nodes .node[data-state="alive"]').length === 3, null, WAIT);
  assert.deepEqual(await nodeStates(page), { [n1.name]: "alive", [n2.name]: "alive", [n3.name]: "alive" });
  const leader = await cluster.leader();
  await page.waitForFunction((name) => document.querySelector(`#nodes .node[data-node="${name}"] .badge.leader`), leader, WAIT);

  // A client on node-3 makes a room; the page on node-1 lists it.
  const client = new StarlingClient({ urls: [n3.wsUrl], token: () => mintToken("mallory"), WebSocket });
  const room = client.join(HOSTILE_ROOM);
  await room.ready;
  await room.publish({ text: "hello" });
  await page.waitForFunction(
    (name) => [...document.querySelectorAll("#rooms tr")].some((tr) => tr.dataset.room === name),
    HOSTILE_ROOM,
    WAIT,
  );
  const row = await page.evaluate((name) => {
    const tr = [...document.querySelectorAll("#rooms tr")].find((r) => r.dataset.room === name);
    return [...tr.children].map((td) => td.textContent);
  }, HOSTILE_ROOM);
  assert.equal(row[0], HOSTILE_ROOM, "the room name is shown as text");
  assert.equal(row[1], "1", "one member");
  assert.equal(row[3], n3.name, "owned by the node its first member joined on");
  assert.equal(await page.evaluate(() => window.__xss), undefined, "no markup from a room name ran");
  assert.equal(await page.locator("#rooms img").count(), 0);

  // The prefix search narrows the list.
  await page.fill("#prefix", "chat:nothing-like-this");
  await page.waitForFunction(() => document.getElementById("rooms").textContent.includes("no rooms"), null, WAIT);
  await page.fill("#prefix", "chat:<");
  await page.waitForFunction((name) => [...document.querySelectorAll("#rooms tr")].some((tr) => tr.dataset.room === name), HOSTILE_ROOM, WAIT);

  // Traffic on the page's node moves its live charts: two members of a
  // room there, one publishing until the page shows deliveries and latency.
  const talker = new StarlingClient({ urls: [n1.wsUrl], token: () => mintToken("talker"), WebSocket });
  const listener = new StarlingClient({ urls: [n1.wsUrl], token: () => mintToken("listener"), WebSocket });
  const talk = talker.join("chat:traffic");
  await talk.ready;
  await listener.join("chat:traffic").ready;
  const shown = () => {
    const value = (id) => document.querySelector(`#${id} .label b`).textContent;
    return value("chart-connections") === "2" && Number(value("chart-deliveries")) > 0 && value("chart-latency").includes("/");
  };
  const deadline = Date.now() + WAIT.timeout;
  for (let n = 0; ; n++) {
    await talk.publish({ n });
    // Paced by the page: one message per check, a check at most 100 ms.
    const done = await page.waitForFunction(shown, null, { timeout: 100 }).then(() => true, () => false);
    if (done) break;
    assert.ok(Date.now() < deadline, "the charts never showed the traffic");
  }
  await screenshot(page, "1-desktop-3-nodes.png");

  // kill -9 the room's node: the map shows it down, its room goes.
  await n3.kill();
  client.close();
  await page.waitForFunction(
    (name) => {
      const card = document.querySelector(`#nodes .node[data-node="${name}"]`);
      return !card || card.dataset.state === "down";
    },
    n3.name,
    WAIT,
  );
  await page.waitForFunction(
    (name) => ![...document.querySelectorAll("#rooms tr")].some((tr) => tr.dataset.room === name),
    HOSTILE_ROOM,
    WAIT,
  );
  await page.waitForFunction((name) => document.getElementById("events").textContent.includes(`${name} gone`), n3.name, WAIT);
  const states = await nodeStates(page);
  assert.equal(states[n1.name], "alive");
  assert.equal(states[n2.name], "alive");
  assert.notEqual(states[n3.name], "alive");
  await screenshot(page, "2-desktop-node-killed.png");

  talker.close();
  listener.close();

  // Phone width: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForFunction(() => document.documentElement.scrollWidth <= 390, null, WAIT);
  await screenshot(page, "3-phone-node-killed.png");

  // The key went only in Authorization headers, never in a URL.
  assert.ok(requests.length > 3);
  for (const url of requests) assert.ok(!url.includes(API_KEY), url);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("starling-admin-key")), API_KEY);
  assert.deepEqual(errors, []);
  await page.close();
});
