// Memory per idle Pusher connection: opens N Pusher protocol-7 connections
// to ws://127.0.0.1:PORT/app/KEY, each subscribed to one public channel
// (100 channels in all), answers pings, and prints the server's RSS slope
// between 1,000 and N connections (read from /proc/PID/status).
//
//   node bench/pusher-idle.mjs PORT KEY SERVER_PID [N=6000]
//
// Starling (release): STARLING_LIMITS__PENDING_HANDSHAKES_PER_IP=1024 \
//   target/release/starling --config config/pusher.toml   -> PORT 7601, KEY app-key
// Sockudo 5.2 (`cargo install sockudo --locked`): PORT=6001 RATE_LIMITER_ENABLED=false \
//   RATE_LIMITER_WS_MAX_REQUESTS=1000000 SOCKUDO_MAX_CONNECTIONS=100000 \
//   SOCKUDO_DEFAULT_APP_ID=app-1 SOCKUDO_DEFAULT_APP_KEY=app-key \
//   SOCKUDO_DEFAULT_APP_SECRET=secret SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=100000 \
//   METRICS_ENABLED=false sockudo                          -> PORT 6001, KEY app-key
// Needs `npm ci` in tests/pusher (for `ws`) and `ulimit -n` above N.

import { readFileSync } from "node:fs";

const { default: WebSocket } = await import(new URL("../tests/pusher/node_modules/ws/wrapper.mjs", import.meta.url));
const [port, key, pid, total = "6000"] = process.argv.slice(2);
if (!pid) throw new Error("usage: node bench/pusher-idle.mjs PORT KEY SERVER_PID [N]");
const rssKib = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]);

const sockets = [];
function open(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/app/${key}?protocol=7&client=js&version=8.4.0`, { perMessageDeflate: false });
    ws.on("message", (raw) => {
      const frame = JSON.parse(raw.toString());
      if (frame.event === "pusher:connection_established") {
        ws.send(JSON.stringify({ event: "pusher:subscribe", data: { channel: `bench-${i % 100}` } }));
      } else if (frame.event === "pusher_internal:subscription_succeeded") {
        resolve();
      } else if (frame.event === "pusher:ping") {
        ws.send(JSON.stringify({ event: "pusher:pong", data: {} }));
      }
    });
    ws.on("error", reject);
    sockets.push(ws);
  });
}

async function openRange(from, to) {
  for (let i = from; i < to; i += 100) {
    await Promise.all(Array.from({ length: Math.min(100, to - i) }, (_, j) => open(i + j)));
  }
}

// RSS once the allocator has settled after each step.
const settle = () => new Promise((resolve) => setTimeout(resolve, 2000));
await openRange(0, 1000);
await settle();
const atThousand = rssKib();
await openRange(1000, Number(total));
await settle();
const atTotal = rssKib();
const perConnection = (atTotal - atThousand) / (Number(total) - 1000);
console.log(JSON.stringify({ rss_1k_kib: atThousand, rss_n_kib: atTotal, n: Number(total), kib_per_connection: perConnection.toFixed(2) }));
process.exit(0);
