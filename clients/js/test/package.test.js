// The client as a JS developer gets it: `npm pack` of clients/js, then
// `npm install` of that tarball into a fresh Node project, where it is used
// by its package name only: imported from Node (ESM) against a real node,
// its types resolved through `exports`, and bundled for the browser with
// esbuild and run in headless Debian Chromium (playwright-core, as in
// browser.test.js). The `ws` peer is installed at the version of this
// package's lockfile, so npm takes it from its cache when `npm ci` ran here.

import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { build } from "esbuild";
import { chromium } from "playwright-core";
import { WebSocket } from "ws";

import { StarlingClient } from "../src/starling.js";
import { API_KEY, mintToken, nextEvent, startNodes, within } from "./harness.js";

const PACKAGE_DIR = join(dirname(fileURLToPath(import.meta.url)), "..");
const PACKAGE = JSON.parse(readFileSync(join(PACKAGE_DIR, "package.json"), "utf8"));
const WS_VERSION = JSON.parse(readFileSync(join(PACKAGE_DIR, "package-lock.json"), "utf8")).packages["node_modules/ws"].version;
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const run = promisify(execFile);

let cluster;
let node;
let work;
let app;
let packed;
before(async () => {
  work = mkdtempSync(join(tmpdir(), "starling-js-package-"));
  app = join(work, "app");
  mkdirSync(app);
  cluster = await startNodes(1);
  node = cluster.nodes[0];
});
after(async () => {
  await cluster?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

/** npm in `cwd`, quiet, with a deadline; resolves with stdout. */
async function npm(cwd, args) {
  const env = { ...process.env, npm_config_audit: "false", npm_config_fund: "false", npm_config_update_notifier: "false" };
  const { stdout } = await run("npm", args, { cwd, env, timeout: 120000, maxBuffer: 16 << 20 });
  return stdout;
}

/** Runs `code` as an ES module in the fresh project (so that it resolves packages from there) and parses its last output line. */
async function inApp(code, nodeFlags = [], env = {}, timeoutMs = 20000) {
  const file = join(app, `check-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(file, code);
  const child = spawn(process.execPath, [...nodeFlags, file], { cwd: app, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => (stdout += chunk));
  child.stderr.on("data", (chunk) => (stderr += chunk));
  const exitCode = await within(
    `${file} to exit`,
    new Promise((resolve) => child.on("exit", resolve)),
    timeoutMs,
  ).catch((error) => {
    child.kill("SIGKILL");
    throw new Error(`${error.message}; stdout: ${stdout} stderr: ${stderr}`);
  });
  assert.equal(exitCode, 0, `${file} failed: ${stderr}`);
  return JSON.parse(stdout.trim().split("\n").at(-1));
}

/** Bundles a browser entry that imports the package by name, resolved from the fresh project. */
async function bundleForBrowser(entry) {
  const path = join(app, "browser-entry.js");
  writeFileSync(path, entry);
  const result = await build({ entryPoints: [path], bundle: true, write: false, platform: "browser", format: "esm", logLevel: "silent" });
  assert.deepEqual(result.warnings, []);
  return result.outputFiles[0].text;
}

// Guarantee: the tarball holds the module, its type declarations, the
// README and package.json, and nothing else (no tests, no node_modules).
test("npm pack ships the module, its types and README, nothing else", async () => {
  const [info] = JSON.parse(await npm(PACKAGE_DIR, ["pack", "--json", "--pack-destination", work]));
  packed = join(work, info.filename);
  assert.equal(info.name, "@starling/client");
  const files = info.files.map((f) => f.path).sort();
  for (const needed of ["README.md", "index.d.ts", "package.json", "src/starling.js"]) assert.ok(files.includes(needed), `${needed} is in the tarball: ${files}`);
  for (const file of files) {
    assert.ok(["README.md", "index.d.ts", "package.json"].includes(file) || file.startsWith("src/"), `unexpected file in the tarball: ${file}`);
  }
  assert.ok(existsSync(packed));
});

// Guarantee: `npm install <tarball>` works in a project that has never seen
// the repository, installs no runtime dependency (`ws` is an optional peer),
// and the name resolves through `exports`: the module for `import`, the
// declarations for TypeScript's `types` condition, `package.json`; every
// value index.d.ts declares is exported by the module.
test("installed from the tarball, the package name resolves to its module and its types", async () => {
  assert.ok(packed, "npm pack ran");
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "starling-package-check", version: "1.0.0", private: true, type: "module" }));
  await npm(app, ["install", "--prefer-offline", "--no-package-lock", packed]);
  const installed = join(app, "node_modules", "@starling", "client");
  assert.equal(JSON.parse(readFileSync(join(installed, "package.json"), "utf8")).version, PACKAGE.version);
  assert.ok(!existsSync(join(app, "node_modules", "ws")), "ws is an optional peer: not installed with the package");

  const resolve = `console.log(JSON.stringify({ main: import.meta.resolve("@starling/client"), manifest: import.meta.resolve("@starling/client/package.json") }));`;
  const plain = await inApp(resolve);
  assert.equal(plain.main, pathToFileURL(join(installed, "src", "starling.js")).href);
  assert.equal(plain.manifest, pathToFileURL(join(installed, "package.json")).href);
  // TypeScript (moduleResolution node16/bundler) takes the `types` condition first.
  const typed = await inApp(resolve, ["--conditions=types"]);
  assert.equal(typed.main, pathToFileURL(join(installed, "index.d.ts")).href);
  assert.ok(existsSync(fileURLToPath(typed.main)));

  const declarations = readFileSync(join(installed, "index.d.ts"), "utf8");
  const declared = [...declarations.matchAll(/^export (?:declare )?(?:class|const|function) (\w+)/gm)].map((m) => m[1]).sort();
  const { exported } = await inApp(`import * as client from "@starling/client"; console.log(JSON.stringify({ exported: Object.keys(client) }));`);
  assert.ok(declared.length >= 6, `declarations found: ${declared}`);
  assert.deepEqual(exported.sort(), declared);
});

// Guarantee: bundled for the browser where `ws` is not installed, the
// package builds and the bundle does not import `ws` (package.json's
// `browser` field maps it away, so webpack-like bundlers do not fail on it).
test("esbuild bundles the package for the browser without ws installed", async () => {
  assert.ok(existsSync(join(app, "node_modules", "@starling", "client")), "the package is installed");
  const bundle = await bundleForBrowser(`import { StarlingClient } from "@starling/client";\nwindow.StarlingClient = StarlingClient;\n`);
  assert.ok(bundle.includes("StarlingClient needs `url` or `urls`"), "the client's code is in the bundle");
  assert.doesNotMatch(bundle, /import\(\s*["']ws["']\s*\)/);
});

// Guarantee: a fresh Node project that has the package and `ws` installed
// connects, joins and publishes with nothing but
// `import { StarlingClient } from "@starling/client"` (no `WebSocket`
// option: the package finds `ws` from the project), and gets the server's
// reason for a refused token. Another client sees the publish.
test("a fresh Node project imports @starling/client by name, joins and publishes", async () => {
  await npm(app, ["install", "--prefer-offline", "--no-package-lock", `ws@${WS_VERSION}`]);
  const observer = new StarlingClient({ url: node.wsUrl, token: () => mintToken("observer"), WebSocket });
  try {
    const observed = observer.join("chat:package");
    await within("the observer's join", observed.ready);
    const seen = nextEvent(observed, "message", 20000, (m) => m.from?.user === "npm-app");
    const result = await inApp(
      `import { StarlingClient } from "@starling/client";
const client = new StarlingClient({ url: process.env.NODE_URL, token: process.env.GOOD_TOKEN });
const room = client.join("chat:package", { via: "npm" });
const joined = await room.ready;
const own = new Promise((resolve) => room.on("message", resolve));
const position = await room.publish({ text: "hello from the installed package" });
const message = await own;
const user = client.session.user;
client.close();
const refused = new StarlingClient({ url: process.env.NODE_URL, token: process.env.BAD_TOKEN, maxAuthFailures: 0 });
const closed = await new Promise((resolve) => refused.on("closed", resolve));
console.log(JSON.stringify({ user, joined: { room: joined.room }, position, message, refusal: { code: closed.code, reason: closed.reason } }));
`,
      [],
      {
        NODE_URL: node.wsUrl,
        GOOD_TOKEN: mintToken("npm-app"),
        BAD_TOKEN: mintToken("npm-app", { secret: "not-the-node-secret-0123456789abcdef" }),
      },
    );
    assert.equal(result.user, "npm-app");
    assert.equal(result.joined.room, "chat:package");
    assert.deepEqual(result.message.data, { text: "hello from the installed package" });
    assert.deepEqual([result.message.epoch, result.message.offset], [result.position.epoch, result.position.offset]);
    // Only `ws` exposes the 401 and its body in Node: the package found it.
    assert.deepEqual(result.refusal, { code: "http401", reason: "invalid token: bad signature" });
    const message = await seen;
    assert.deepEqual([message.data, message.offset], [{ text: "hello from the installed package" }, result.position.offset]);
  } finally {
    observer.close();
  }
});

// Guarantee: the esbuild bundle of a small browser app (the package
// imported by name, `ws` installed in the project as in a full-stack app)
// runs in headless Chromium: it joins a room, receives a message published
// through the server API and one from a Node client, and its own publish
// reaches the Node client. A refused token shows what a browser can know:
// a 1006 before the socket opened, the status and reason hidden.
test("the browser bundle joins a room and receives messages in headless Chromium", { skip: !existsSync(CHROMIUM) && `no chromium at ${CHROMIUM}` }, async () => {
  const bundle = await bundleForBrowser(`import { StarlingClient } from "@starling/client";
const params = new URLSearchParams(location.hash.slice(1));
const url = params.get("url");
const client = new StarlingClient({ url, token: params.get("token") });
const room = client.join("chat:bundle");
window.received = [];
room.on("message", (m) => window.received.push({ data: m.data, user: m.from ? m.from.user : null }));
room.ready.then((r) => (window.joined = r.room), (e) => (window.joinError = String(e)));
window.publish = (data) => room.publish(data);
const refused = new StarlingClient({ url, token: "not-a-token" });
refused.on("disconnected", ({ code, reason }) => {
  window.refusal = { code, reason };
  refused.close();
});
`);
  assert.doesNotMatch(bundle, /ws does not work in the browser/, "the bundle does not carry ws's browser stub");
  const pages = { "/": `<!doctype html><meta charset="utf-8"><title>bundle</title><script type="module" src="/bundle.js"></script>`, "/bundle.js": bundle };
  const server = createServer((request, response) => {
    const body = pages[request.url];
    response.writeHead(body ? 200 : 404, { "content-type": request.url.endsWith(".js") ? "text/javascript" : "text/html" });
    response.end(body || "");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const profile = mkdtempSync(join(tmpdir(), "starling-chromium-"));
  let context;
  const observer = new StarlingClient({ url: node.wsUrl, token: () => mintToken("node-side"), WebSocket });
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    const hash = new URLSearchParams({ url: node.wsUrl, token: mintToken("browser-user") }).toString();
    await page.goto(`http://127.0.0.1:${server.address().port}/#${hash}`);
    const WAIT = { timeout: 15000 };
    await page.waitForFunction(() => window.joined || window.joinError, null, WAIT);
    assert.equal(await page.evaluate(() => window.joinError ?? window.joined), "chat:bundle");

    const response = await fetch(`${node.apiUrl}/api/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ room: "chat:bundle", data: { text: "from the server API" } }),
      signal: AbortSignal.timeout(5000),
    });
    assert.equal(response.status, 200);
    const observed = observer.join("chat:bundle");
    await within("the Node client's join", observed.ready);
    await observed.publish({ text: "from a Node client" });
    await page.waitForFunction(() => window.received.length >= 2, null, WAIT);
    assert.deepEqual(await page.evaluate(() => window.received), [
      { data: { text: "from the server API" }, user: null },
      { data: { text: "from a Node client" }, user: "node-side" },
    ]);

    const fromBrowser = nextEvent(observed, "message", 10000, (m) => m.from?.user === "browser-user");
    await page.evaluate(() => window.publish({ text: "from the browser bundle" }));
    assert.deepEqual((await fromBrowser).data, { text: "from the browser bundle" });

    await page.waitForFunction(() => window.refusal, null, WAIT);
    const refusal = await page.evaluate(() => window.refusal);
    assert.equal(refusal.code, 1006, "a browser sees a refused upgrade as 1006");
    assert.match(refusal.reason, /^refused or unreachable before opening/);
    assert.deepEqual(errors, []);
  } finally {
    observer.close();
    await context?.close();
    rmSync(profile, { recursive: true, force: true });
    await new Promise((r) => server.close(r));
  }
});
