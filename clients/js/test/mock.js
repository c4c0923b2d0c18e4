// A scripted stand-in for a Starling node, for the few client behaviours a
// real node cannot be made to show on demand (a join reply that never comes,
// messages queued before a join reply, a refusal at an exact moment). It
// speaks the wire contract (docs/protocol.md): `welcome` first, then each
// inbound request is handed to the test's `handle(conn, frame)`; `pong`s
// are swallowed.

import { once } from "node:events";
import { WebSocketServer } from "ws";

export async function mockServer(handle) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await once(wss, "listening");
  const conns = [];
  const waiters = [];
  wss.on("connection", (ws) => {
    const conn = {
      index: conns.length,
      ws,
      requests: [],
      send: (frame) => ws.readyState === 1 && ws.send(JSON.stringify(frame)),
      reply: (id, result = {}) => conn.send({ type: "reply", id, ok: true, result }),
      refuse: (id, code, extra = {}) => conn.send({ type: "reply", id, ok: false, error: { code, message: code, ...extra } }),
    };
    conns.push(conn);
    conn.send({ type: "welcome", conn: `00000000000000${String(conn.index).padStart(2, "0")}`, node: "mock", user: "u", heartbeat_ms: 60000 });
    ws.on("message", (data) => {
      const frame = JSON.parse(String(data));
      if (frame.type === "pong") return;
      conn.requests.push(frame);
      handle(conn, frame);
      for (const waiter of [...waiters]) waiter();
    });
    for (const waiter of [...waiters]) waiter();
  });
  const server = {
    url: `ws://127.0.0.1:${wss.address().port}/ws`,
    conns,
    /** Resolves when `check()` is truthy (checked on every connection and request), or rejects after `timeoutMs`. */
    until(what, check, timeoutMs = 5000) {
      return new Promise((resolve, reject) => {
        const done = () => {
          const value = check();
          if (!value) return;
          clearTimeout(timer);
          waiters.splice(waiters.indexOf(done), 1);
          resolve(value);
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(done), 1);
          reject(new Error(`mock server: timed out waiting for ${what}`));
        }, timeoutMs);
        waiters.push(done);
        done();
      });
    },
    async close() {
      for (const client of wss.clients) client.terminate();
      await new Promise((resolve) => wss.close(resolve));
    },
  };
  return server;
}
