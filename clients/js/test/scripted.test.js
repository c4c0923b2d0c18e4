// The client against a scripted mock node (test/mock.js) for behaviours a
// real node cannot be made to show on demand: messages queued before a join
// reply, a join or request that is never answered while close() is called,
// a refusal at an exact moment. Each test states the guarantee it proves.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { WebSocket } from "ws";

import { StarlingClient } from "../src/starling.js";
import { eventually, nextEvent, within } from "./harness.js";
import { mockServer } from "./mock.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const message = (room, epoch, offset) => ({ type: "message", room, epoch, offset, data: { offset }, from: { user: "x", conn: "ffffffffffffffff" } });

// Guarantee (protocol.md §10, "Join reply position"): messages the server
// queues before a join reply were sequenced after the join took effect, so
// they are the member's; the client holds them until the reply and then
// emits them (after `subscribed` / `resubscribed`), dropping none. On a
// re-join, `missed` is false when those early messages continue exactly
// from the last position seen, true when there is a gap.
test("messages queued before the join reply are delivered", async () => {
  const mock = await mockServer((conn, frame) => {
    if (frame.type !== "join") return;
    const script = [
      { early: [2, 3], reply: 3 }, // first join: the room is at 1; 2 and 3 came after the join took effect
      { early: [5], reply: 5 }, // re-join after seeing 4: 5 continues, nothing missed
      { early: [8], reply: 8 }, // re-join after 5: 6 and 7 were sequenced while away
    ][conn.index];
    for (const offset of script.early) conn.send(message(frame.room, 7, offset));
    conn.reply(frame.id, { room: frame.room, epoch: 7, offset: script.reply, members: [] });
  });
  const client = new StarlingClient({ url: mock.url, token: "t", WebSocket, minReconnectDelayMs: 1, maxReconnectDelayMs: 5 });
  try {
    const room = client.join("chat:early");
    const events = [];
    room.on("message", (m) => events.push(`message ${m.epoch}/${m.offset}`));
    room.on("subscribed", (p) => events.push(`subscribed ${p.epoch}/${p.offset}`));
    room.on("resubscribed", (r) => events.push(`resubscribed ${r.epoch}/${r.offset} missed=${r.missed}`));
    const ready = await within("the join", room.ready);
    assert.equal(ready.offset, 3);
    assert.deepEqual(events, ["subscribed 7/3", "message 7/2", "message 7/3"]);
    assert.deepEqual([room.epoch, room.offset], [7, 3], "the position is the join reply's");

    const after = nextEvent(room, "message");
    mock.conns[0].send(message("chat:early", 7, 4));
    assert.equal((await after).offset, 4);

    for (const expected of [
      ["resubscribed 7/5 missed=false", "message 7/5"],
      ["resubscribed 7/8 missed=true", "message 7/8"],
    ]) {
      events.length = 0;
      const back = nextEvent(room, "resubscribed");
      mock.conns.at(-1).ws.terminate();
      await back;
      assert.deepEqual(events, expected);
    }
  } finally {
    client.close();
    await mock.close();
  }
});

// Guarantee: close() settles every pending promise with `closed` at once: a
// request in flight, the `ready` of a room whose join is unanswered, a
// publish waiting on its retry timer, a queued publish; publishes and
// requests made after close() fail at once with `closed`; and nothing is
// left to keep Node's event loop alive (the process exits by itself).
test("close() rejects everything pending with `closed` and leaves no timer", async () => {
  const mock = await mockServer((conn, frame) => {
    if (frame.type === "join" && frame.room === "chat:a") conn.reply(frame.id, { room: frame.room, epoch: 1, offset: 0, members: [] });
    if (frame.type === "publish") conn.refuse(frame.id, "rate_limited", { retry_after_ms: 60000 });
    if (frame.type === "presence" && frame.room === "chat:sync") conn.reply(frame.id, { members: [] });
  });
  try {
    const child = spawn(process.execPath, [join(HERE, "fixtures/close-child.js")], {
      env: { ...process.env, MOCK_URL: mock.url },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let output = "";
    let printedAt = null;
    child.stdout.on("data", (chunk) => {
      output += chunk;
      printedAt ??= Date.now();
    });
    const exitCode = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`the client process did not exit within 8 s; it printed: ${output || "(nothing)"}`));
      }, 8000);
      child.on("exit", (code) => {
        clearTimeout(timer);
        resolve(code);
      });
    });
    assert.equal(exitCode, 0);
    const exitedAfterMs = Date.now() - printedAt;
    const { state, settled } = JSON.parse(output);
    assert.equal(state, "closed");
    for (const name of ["readyOfUnjoinedRoom", "publishWaitingOnRetry", "publishQueued", "requestInFlight", "publishAfterClose", "requestAfterClose"]) {
      assert.equal(settled[name]?.ok, false, `${name} rejected`);
      assert.equal(settled[name].code, "closed", `${name} rejected with closed (got ${settled[name].code})`);
      assert.ok(settled[name].ms < 200, `${name} settled ${settled[name].ms} ms after close()`);
    }
    assert.ok(exitedAfterMs < 3000, `the process exited ${exitedAfterMs} ms after close() settled everything`);
  } finally {
    await mock.close();
  }
});

// Guarantee: a publish answered `rate_limited` whose retry comes while its
// room is being re-joined goes back into the offline queue under the same
// bound as any other: the queue never holds more than queueLimit, and the
// oldest publish (this one) is the one dropped with `queue_overflow`.
test("a retried publish re-enters the queue within queueLimit", async () => {
  let releaseJoin;
  const joinReleased = new Promise((resolve) => (releaseJoin = resolve));
  const mock = await mockServer(async (conn, frame) => {
    if (frame.type === "join") {
      if (conn.index > 0) await joinReleased; // the re-join waits until the test says
      conn.reply(frame.id, { room: frame.room, epoch: 1, offset: 0, members: [] });
    }
    if (frame.type === "publish") {
      if (conn.index === 0) {
        conn.refuse(frame.id, "rate_limited", { retry_after_ms: 300 });
        conn.ws.terminate();
      } else conn.reply(frame.id, { epoch: 1, offset: frame.data.n });
    }
  });
  const client = new StarlingClient({ url: mock.url, token: "t", WebSocket, queueLimit: 2, minReconnectDelayMs: 1, maxReconnectDelayMs: 5 });
  try {
    const room = client.join("chat:retry");
    await within("the join", room.ready);
    const lost = nextEvent(client, "disconnected");
    const first = room.publish({ n: 1 });
    first.catch(() => {});
    await lost;
    const later = [room.publish({ n: 2 }), room.publish({ n: 3 })];
    await mock.until("the re-join", () => mock.conns[1]?.requests.some((f) => f.type === "join"));
    // The retry timer (300 ms) fires while the re-join is unanswered.
    await assert.rejects(within("the retried publish", first, 3000), { code: "queue_overflow" });
    releaseJoin();
    assert.deepEqual((await within("the queued publishes", Promise.all(later))).map((p) => p.offset), [2, 3]);
    assert.deepEqual(mock.conns[1].requests.filter((f) => f.type === "publish").map((f) => f.data.n), [2, 3]);
  } finally {
    client.close();
    await mock.close();
  }
});

// Guarantee: joins are paced. At most maxJoinsInFlight (10) joins are
// outstanding at once, and a `rate_limited` join pauses every join until its
// retry_after_ms has passed, so a client in many rooms cannot run into the
// server's consecutive-refusal close (4029). A join answered `unavailable`
// (a failover) is retried after at most 200 ms, not the 500 ms
// retry_after_ms, with a growing delay on repeats.
test("joins are bounded in flight, paused on rate_limited, retried fast on unavailable", async () => {
  const held = [];
  let refused = null;
  const unavailableAt = [];
  const mock = await mockServer((conn, frame) => {
    if (frame.type !== "join") return;
    if (frame.room === "chat:flaky") {
      unavailableAt.push(Date.now());
      if (unavailableAt.length <= 3) return conn.refuse(frame.id, "unavailable", { retry_after_ms: 500 });
      return conn.reply(frame.id, { room: frame.room, epoch: 1, offset: 0, members: [] });
    }
    held.push(frame);
  });
  const client = new StarlingClient({ url: mock.url, token: "t", WebSocket });
  try {
    await nextEvent(client, "connected");
    const rooms = Array.from({ length: 25 }, (_, i) => client.join(`chat:many-${i}`));
    await mock.until("10 joins", () => held.length >= 10);
    const conn = mock.conns[0];
    // Replies come in order; a presence reply proves no 11th join was sent before it.
    const probe = client.presence("chat:probe");
    await mock.until("the probe", () => conn.requests.some((f) => f.type === "presence"));
    assert.equal(held.length, 10, "at most 10 joins in flight");
    conn.reply(conn.requests.find((f) => f.type === "presence").id, { members: [] });
    await within("the probe", probe);
    // Refuse one join: the others still answer, but nothing new is sent until retry_after_ms.
    refused = held.shift();
    conn.refuse(refused.id, "rate_limited", { retry_after_ms: 400 });
    const refusedAt = Date.now();
    for (const frame of held.splice(0)) conn.reply(frame.id, { room: frame.room, epoch: 1, offset: 0, members: [] });
    await mock.until("joins to resume", () => held.length > 0);
    const pausedMs = Date.now() - refusedAt;
    assert.ok(pausedMs >= 390, `joins resumed ${pausedMs} ms after a rate_limited with retry_after_ms 400`);
    assert.equal(held[0].room, refused.room, "the refused join goes first");
    const answerAll = () => {
      for (const frame of held.splice(0)) conn.reply(frame.id, { room: frame.room, epoch: 1, offset: 0, members: [] });
    };
    while (rooms.some((r) => r.state !== "joined")) {
      answerAll();
      await eventually("more joins, or every room joined", () => held.length > 0 || rooms.every((r) => r.state === "joined"), 5000);
    }

    const flaky = client.join("chat:flaky");
    await within("the flaky join", flaky.ready);
    const gaps = unavailableAt.slice(1).map((t, i) => t - unavailableAt[i]);
    assert.equal(gaps.length, 3);
    assert.ok(gaps[0] <= 260, `first retry after ${gaps[0]} ms (want at most 200 ms + scheduling)`);
    assert.ok(gaps.every((g) => g >= 90), `retries are not immediate: ${gaps}`);
  } finally {
    client.close();
    await mock.close();
  }
});

/** A TCP server that answers the Nth HTTP request it reads with `responses[N]` (raw bytes); `end` closes the socket after it. */
async function rawHttpServer(responses) {
  const sockets = [];
  let served = 0;
  const server = net.createServer((socket) => {
    sockets.push(socket);
    let head = "";
    socket.setEncoding("latin1");
    socket.on("data", (chunk) => {
      if (head.includes("\r\n\r\n")) return;
      head += chunk;
      if (!head.includes("\r\n\r\n")) return;
      const { bytes, end } = responses[Math.min(served++, responses.length - 1)];
      socket.write(bytes, "latin1");
      if (end) socket.end();
    });
    socket.on("error", () => {});
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `ws://127.0.0.1:${server.address().port}/ws`,
    close: () => {
      for (const socket of sockets) socket.destroy();
      return new Promise((r) => server.close(r));
    },
  };
}

// Guarantee: reading a refused upgrade's reason (Node, `ws`) is bounded and
// only takes plain text: a body that never ends is cut after about a second
// (the refusal is still reported as its HTTP status, not as a connect
// timeout), a proxy's HTML page is not taken as a reason, and a long body
// becomes one line of at most 200 characters.
test("the reason of a refused upgrade is read bounded in time and size, plain text only", async () => {
  const html = "<html><body><h1>403 Forbidden</h1></body></html>";
  const raw = await rawHttpServer([
    // More body announced than sent, and the socket left open.
    { bytes: "HTTP/1.1 401 Unauthorized\r\nContent-Length: 100\r\n\r\ninvalid token:\r\n  bad signature", end: false },
    { bytes: `HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: ${html.length}\r\n\r\n${html}`, end: true },
    { bytes: `HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\r\nnode is full\n${"x".repeat(5000)}`, end: true },
  ]);
  const client = new StarlingClient({ url: raw.url, token: "t", WebSocket, connectTimeoutMs: 4000, minReconnectDelayMs: 1, maxReconnectDelayMs: 5 });
  try {
    const seen = [];
    const startedAt = Date.now();
    await within(
      "three refusals",
      new Promise((resolve) => {
        client.on("disconnected", ({ code, reason }) => {
          seen.push({ code, reason, ms: Date.now() - startedAt });
          if (seen.length === 3) resolve();
        });
      }),
      8000,
    );
    assert.deepEqual(
      seen.map(({ code, reason }) => ({ code, reason })),
      [
        { code: "http401", reason: "invalid token: bad signature" },
        { code: "http403", reason: "upgrade refused with HTTP 403" },
        { code: "http503", reason: `node is full ${"x".repeat(200 - "node is full ".length)}` },
      ],
    );
    assert.ok(seen[0].ms >= 900 && seen[0].ms < 3000, `the unfinished body was cut after ${seen[0].ms} ms`);
  } finally {
    client.close();
    await raw.close();
  }
});
