// pusher-js 8's browser build in headless Chromium (Debian's `chromium`,
// driven by playwright-core; no browser is downloaded) against a real
// node: a tiny local web server serves the page, pusher-js
// (dist/web/pusher.js) and the app's auth endpoint (the `pusher` SDK's
// authorizeChannel); the page subscribes to a public and a private
// channel and receives events triggered through the HTTP API.

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

import { APP, serverSdk, startPusherNodes } from "./support.js";

const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const WAIT = { timeout: 15000 };
const PUSHER_JS = readFileSync(createRequire(import.meta.url).resolve("pusher-js/dist/web/pusher.js"));

let cluster;
let node;
let web;
let context;
let profile;

/** The test page: pusher-js pointed at the node, logging what it gets into `window.got`. */
function page(wsPort) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>pusher-js in a browser</title>
<script src="/pusher.js"></script></head>
<body><pre id="log"></pre>
<script>
  window.got = [];
  const log = (line) => { window.got.push(line); document.getElementById("log").textContent += line + "\\n"; };
  const pusher = new Pusher(${JSON.stringify(APP.key)}, {
    cluster: "local", wsHost: "127.0.0.1", wsPort: ${wsPort}, forceTLS: false,
    enabledTransports: ["ws"], disableStats: true,
    channelAuthorization: { endpoint: "/pusher/auth", transport: "ajax" },
  });
  pusher.connection.bind("connected", () => log("connected " + pusher.connection.socket_id));
  for (const name of ["browser-news", "private-browser-orders"]) {
    const channel = pusher.subscribe(name);
    channel.bind("pusher:subscription_succeeded", () => log("subscribed " + name));
    channel.bind("pusher:subscription_error", (e) => log("error " + name + " " + JSON.stringify(e)));
    channel.bind("update", (data) => log("update " + name + " " + JSON.stringify(data)));
  }
</script></body></html>`;
}

/** Serves the page, pusher-js, and the auth endpoint (form-encoded `socket_id`, `channel_name`). */
function startWeb(wsPort) {
  const sdk = serverSdk(node);
  const server = createServer((request, response) => {
    if (request.method === "GET" && request.url === "/") {
      response.writeHead(200, { "content-type": "text/html" }).end(page(wsPort));
    } else if (request.method === "GET" && request.url === "/pusher.js") {
      response.writeHead(200, { "content-type": "application/javascript" }).end(PUSHER_JS);
    } else if (request.method === "POST" && request.url === "/pusher/auth") {
      let body = "";
      request.on("data", (chunk) => { body += chunk; });
      request.on("end", () => {
        const form = new URLSearchParams(body);
        const auth = sdk.authorizeChannel(form.get("socket_id"), form.get("channel_name"));
        response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(auth));
      });
    } else {
      response.writeHead(404).end();
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

before(async () => {
  cluster = await startPusherNodes(1);
  node = cluster.nodes[0];
  web = await startWeb(Number(new URL(node.wsUrl).port));
  profile = mkdtempSync(join(tmpdir(), "starling-pusher-chromium-"));
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
  });
});

after(async () => {
  await context?.close();
  web?.close();
  await cluster?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test("pusher-js's browser build subscribes to a public and a private channel and receives events triggered through the HTTP API", async () => {
  const tab = await context.newPage();
  const errors = [];
  tab.on("pageerror", (error) => errors.push(error));
  await tab.goto(`http://127.0.0.1:${web.address().port}/`);
  const has = (line) => tab.waitForFunction((l) => window.got.includes(l), line, WAIT);
  await tab.waitForFunction(() => window.got.some((l) => /^connected \d+\.\d+$/.test(l)), null, WAIT);
  await has("subscribed browser-news");
  await has("subscribed private-browser-orders"); // authorised through the page's auth endpoint

  const sdk = serverSdk(node);
  await sdk.trigger("browser-news", "update", { n: 1 });
  await sdk.trigger("private-browser-orders", "update", { order: 42 });
  await has('update browser-news {"n":1}');
  await has('update private-browser-orders {"order":42}');
  assert.deepEqual(await tab.evaluate(() => window.got.filter((l) => l.startsWith("error"))), []);
  assert.deepEqual(errors, []);
});
