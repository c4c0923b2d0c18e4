// Publish -> acknowledgement latency on the example 3-node cluster
// (config/cluster/*.toml, loopback, insecure peers): how long a client waits
// for its publish reply, from a member on the room's owner node and from a
// member on another node (forwarded). Sequential publishes (one in flight),
// so each sample is one full round: client -> node [-> owner] -> reply.
//
// Usage: node bench/ack-latency.mjs STARLING_BINARY [PUBLISHES]
// Needs the `ws` package: NODE_PATH=clients/js/node_modules (bench/ack-latency.sh sets it).
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { WebSocket } = require("ws");

const BIN = process.argv[2];
const COUNT = Number(process.argv[3] || 2000);
const SECRET = "example-only-replace-me-0123456789abcdef";
const data = mkdtempSync(join(tmpdir(), "ack-latency-"));
const nodes = [1, 2, 3].map((n) =>
  spawn(BIN, ["--config", `${process.env.CONFIG_DIR || "config/cluster"}/node-${n}.toml`], {
    env: { ...process.env, STARLING_NODE__DATA_DIR: join(data, `node-${n}`), STARLING_LOG__LEVEL: "warn" },
    stdio: ["ignore", "ignore", "inherit"],
  }),
);
const stop = () => {
  for (const node of nodes) node.kill("SIGKILL");
  rmSync(data, { recursive: true, force: true });
};
process.on("exit", stop);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function ready(port) {
  for (let i = 0; i < 300; i++) {
    try {
      const response = await fetch(`http://127.0.0.1:${port}/readyz`);
      if (response.ok) return;
    } catch {}
    await sleep(100);
  }
  throw new Error(`node on ${port} never ready`);
}

function token(user) {
  return execFileSync(BIN, ["token", "--secret", SECRET, "--sub", user, "--rooms", "*", "--ttl", "1h"]).toString().trim();
}

function connect(port, user) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?token=${token(user)}`);
    const pending = new Map();
    let next = 1;
    ws.on("message", (raw) => {
      const frame = JSON.parse(raw.toString());
      if (frame.type === "welcome") resolve(client);
      if (frame.type === "ping") ws.send('{"type":"pong"}');
      if (frame.type === "reply" && pending.has(frame.id)) {
        pending.get(frame.id)(frame);
        pending.delete(frame.id);
      }
    });
    ws.on("error", reject);
    const client = {
      request(body) {
        const id = next++;
        return new Promise((done) => {
          pending.set(id, done);
          ws.send(JSON.stringify({ ...body, id }));
        });
      },
      close: () => ws.close(),
    };
  });
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

async function measure(client, room) {
  const samples = [];
  for (let i = 0; i < COUNT; i++) {
    const start = process.hrtime.bigint();
    const reply = await client.request({ type: "publish", room, data: { i } });
    if (!reply.ok) throw new Error(JSON.stringify(reply));
    samples.push(Number(process.hrtime.bigint() - start) / 1e6);
    // Stay under the default publish rate limit (50/s, burst 100).
    if (i % 40 === 39) await sleep(800);
  }
  samples.sort((a, b) => a - b);
  return `p50 ${percentile(samples, 50).toFixed(2)} ms, p99 ${percentile(samples, 99).toFixed(2)} ms (${COUNT} publishes)`;
}

await Promise.all([7701, 7702, 7703].map(ready));
const owner = await connect(7601, "owner-side");
const other = await connect(7602, "other-side");
const room = "chat:ack-latency";
const joined = await owner.request({ type: "join", room });
if (!joined.ok) throw new Error(JSON.stringify(joined));
await other.request({ type: "join", room });
console.log(`${BIN}`);
console.log(`  publisher on the owner node:    ${await measure(owner, room)}`);
console.log(`  publisher on another node:      ${await measure(other, room)}`);
owner.close();
other.close();
stop();
process.exit(0);
