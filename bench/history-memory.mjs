// Memory per room of history: one node, ROOMS rooms with one member each
// (10 connections x 100 rooms), then HISTORY messages of 100 bytes of data
// published to every room through the HTTP API. Prints the node's RSS before
// and after (from /proc), the growth per room, and starling_history_bytes.
//
// Usage: node bench/history-memory.mjs STARLING_BINARY [ROOMS] [HISTORY]
// Needs the `ws` package: NODE_PATH=clients/js/node_modules.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { WebSocket } = require("ws");

const BIN = process.argv[2];
const ROOMS = Number(process.argv[3] || 1000);
const HISTORY = Number(process.argv[4] || 100);
const SECRET = "history-memory-secret-history-memory-secret";
const KEY = "history-memory-api-key";
const dir = mkdtempSync(join(tmpdir(), "history-memory-"));
writeFileSync(
  join(dir, "node.toml"),
  `[node]
name = "mem"
data_dir = "${dir}/data"
[listen]
client = "127.0.0.1:7641"
api = "127.0.0.1:7741"
[auth]
jwt_hs256_secret = "${SECRET}"
api_key = "${KEY}"
[limits]
history_bytes = 1073741824
[log]
level = "warn"
[[namespaces]]
name = "chat"
history_size = ${HISTORY}
`,
);
const node = spawn(BIN, ["--config", join(dir, "node.toml")], { stdio: ["ignore", "ignore", "inherit"] });
process.on("exit", () => {
  node.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${node.pid}/status`, "utf8"))[1]) * 1024;
async function metric(name) {
  const text = await (await fetch("http://127.0.0.1:7741/metrics")).text();
  const line = text.split("\n").find((l) => l.startsWith(name));
  return line ? Number(line.split(" ").at(-1)) : NaN;
}

for (let i = 0; ; i++) {
  try {
    if ((await fetch("http://127.0.0.1:7741/readyz")).ok) break;
  } catch {}
  if (i > 100) throw new Error("node never ready");
  await sleep(100);
}
const token = execFileSync(BIN, ["token", "--secret", SECRET, "--sub", "m", "--rooms", "*", "--ttl", "1h"]).toString().trim();

function member(rooms) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:7641/ws?token=${token}`);
    let answered = 0;
    ws.on("message", (raw) => {
      const frame = JSON.parse(raw.toString());
      if (frame.type === "welcome") {
        // Joins are paced under the default request rate (20/s, burst 50).
        (async () => {
          for (const [i, room] of rooms.entries()) {
            ws.send(JSON.stringify({ type: "join", id: i + 1, room }));
            if (i % 15 === 14) await sleep(800);
          }
        })();
      }
      if (frame.type === "ping") ws.send('{"type":"pong"}');
      if (frame.type === "reply") {
        if (!frame.ok) reject(new Error(JSON.stringify(frame)));
        if (++answered === rooms.length) resolve(ws);
      }
    });
    ws.on("error", reject);
  });
}

const names = Array.from({ length: ROOMS }, (_, i) => `chat:room-${i}`);
const sockets = [];
for (let i = 0; i < names.length; i += 100) sockets.push(member(names.slice(i, i + 100)));
await Promise.all(sockets);
await sleep(1000);
const before = rss();
const data = "x".repeat(98); // a JSON string of 100 bytes
let next = 0;
const jobs = [];
for (let w = 0; w < 32; w++) {
  jobs.push(
    (async () => {
      for (;;) {
        const n = next++;
        if (n >= ROOMS * HISTORY) return;
        const response = await fetch("http://127.0.0.1:7741/api/publish", {
          method: "POST",
          headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
          body: JSON.stringify({ room: names[n % ROOMS], data }),
        });
        if (!response.ok) throw new Error(await response.text());
      }
    })(),
  );
}
await Promise.all(jobs);
await sleep(2000);
const after = rss();
const held = await metric('starling_history_bytes{node="mem"}');
console.log(`${BIN}: ${ROOMS} rooms x ${HISTORY} messages of 100 bytes of data`);
console.log(`  RSS before ${(before / 2 ** 20).toFixed(1)} MiB, after ${(after / 2 ** 20).toFixed(1)} MiB`);
console.log(`  RSS growth per room: ${((after - before) / ROOMS / 1024).toFixed(1)} KiB; per message ${((after - before) / ROOMS / HISTORY).toFixed(0)} bytes`);
console.log(`  starling_history_bytes: ${(held / 2 ** 20).toFixed(1)} MiB (${(held / ROOMS / 1024).toFixed(1)} KiB per room)`);
process.exit(0);
