// The client against one real `starling` process: rooms, presence, replies,
// timeouts, the heartbeat watchdog, the offline queue, token refresh on 1008
// and the close-code policy. Each test states the guarantee it proves.

import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";

import { StarlingClient } from "../src/starling.js";
import { eventually, mintToken, nextEvent, startNodes } from "./harness.js";

let cluster;
let node;
before(async () => {
  cluster = await startNodes(1, { heartbeatMs: 1000 });
  node = cluster.nodes[0];
});
after(async () => {
  await cluster?.stop();
});

const clients = [];
function client(user, options = {}) {
  const c = new StarlingClient({ url: node.wsUrl, token: () => mintToken(user), WebSocket, ...options });
  clients.push(c);
  return c;
}
function closeAll() {
  while (clients.length) clients.pop().close();
}

// Guarantee: join resolves with the room's position and members; other
// members get `joined`/`left`; a publish resolves with the same (epoch,
// offset) every member's `message` carries, the publisher included.
test("join, publish and presence events between two clients", async () => {
  const alice = client("alice");
  const bob = client("bob");
  const roomA = alice.join("chat:basics", { name: "Alice" });
  const joinedA = await roomA.ready;
  assert.equal(joinedA.room, "chat:basics");
  assert.deepEqual(roomA.members.map((m) => m.user), ["alice"]);
  assert.deepEqual(roomA.members[0].meta, { name: "Alice" });

  const bobArrives = nextEvent(roomA, "joined");
  const roomB = bob.join("chat:basics");
  await roomB.ready;
  assert.equal((await bobArrives).user, "bob");
  assert.deepEqual(roomA.members.map((m) => m.user).sort(), ["alice", "bob"]);
  assert.deepEqual(roomB.members.map((m) => m.user).sort(), ["alice", "bob"]);

  const atBob = nextEvent(roomB, "message");
  const atAlice = nextEvent(roomA, "message");
  const position = await roomA.publish({ text: "hi bob" });
  const received = await atBob;
  assert.deepEqual(received.data, { text: "hi bob" });
  assert.equal(received.from.user, "alice");
  assert.equal(received.offset, position.offset);
  assert.equal(received.epoch, position.epoch);
  assert.equal((await atAlice).offset, position.offset);

  const members = await roomB.presence();
  assert.deepEqual(members.map((m) => m.user).sort(), ["alice", "bob"]);

  const bobLeaves = nextEvent(roomA, "left");
  await roomB.leave();
  assert.equal((await bobLeaves).user, "bob");
  assert.deepEqual(roomA.members.map((m) => m.user), ["alice"]);
  await assert.rejects(roomB.publish({ text: "after leave" }), { code: "left" });
  closeAll();
});

// Guarantee: a join the server refuses rejects `ready` with the server's code,
// and a request is settled by an error reply, not left hanging.
test("refused join and error replies reject with the wire code", async () => {
  const carol = client("carol");
  const room = carol.join("nochat:x");
  await assert.rejects(room.ready, { code: "forbidden" });
  assert.equal(room.state, "failed");
  assert.equal(carol.state, "connected");
  await assert.rejects(carol.presence("bad room name"), { code: "bad_request" });
  closeAll();
});

// Guarantee: when the server stops answering (process stopped, TCP still
// open), a request rejects with `timeout` after requestTimeoutMs, and the
// heartbeat watchdog declares the link dead without waiting for TCP.
test("reply timeout and heartbeat watchdog on a frozen node", async () => {
  const dave = client("dave", { requestTimeoutMs: 400, heartbeatGraceMs: 500 });
  const room = dave.join("chat:frozen");
  await room.ready;
  assert.equal(dave.session.heartbeat_ms, 1000);
  process.kill(node.child.pid, "SIGSTOP");
  try {
    // kill(2) returns before every thread has stopped: wait for each to be in state T.
    const task = `/proc/${node.child.pid}/task`;
    const state = (tid) => readFileSync(`${task}/${tid}/stat`, "utf8").split(") ")[1][0];
    await eventually("every thread of the node to be stopped", () => readdirSync(task).every((t) => state(t) === "T"));
    const started = Date.now();
    await assert.rejects(room.publish({ text: "into the void" }), { code: "timeout" });
    const waited = Date.now() - started;
    assert.ok(waited >= 390 && waited < 1500, `timeout after ${waited} ms`);
    const lost = await nextEvent(dave, "disconnected", 5000);
    assert.equal(lost.code, 4000, "the watchdog, not TCP, ended the connection");
  } finally {
    process.kill(node.child.pid, "SIGCONT");
  }
  await nextEvent(room, "resubscribed", 10000);
  assert.equal(dave.state, "connected");
  closeAll();
});

// Guarantee: publishes made while disconnected are queued (bounded, oldest
// dropped first with `queue_overflow`) and sent in order after the
// reconnect and re-join; each promise resolves with its own position.
test("offline queue is sent in order after reconnect", async () => {
  const erin = client("erin", { queueLimit: 3, minReconnectDelayMs: 50, maxReconnectDelayMs: 200 });
  const room = erin.join("chat:queue");
  await room.ready;
  await node.kill();
  await eventually("erin to notice the node is gone", () => erin.state !== "connected");
  const overflowed = room.publish({ n: 0 });
  const queued = [1, 2, 3].map((n) => room.publish({ n }));
  await assert.rejects(overflowed, { code: "queue_overflow" });
  const received = [];
  room.on("message", (m) => received.push(m));
  const resubscribed = nextEvent(room, "resubscribed", 15000);
  await cluster.restart(0);
  node = cluster.nodes[0];
  await resubscribed;
  const positions = await Promise.all(queued);
  const offsets = positions.map((p) => p.offset);
  assert.deepEqual(offsets, [offsets[0], offsets[0] + 1, offsets[0] + 2], "sent in call order");
  await eventually("erin to receive her own queued messages", () => received.length === 3);
  assert.deepEqual(received.map((m) => m.data.n), [1, 2, 3]);
  closeAll();
});

// Guarantee: the token provider is called on every connect; when the token
// expires (close 1008) the client gets a fresh one, reconnects at once and
// re-joins its rooms.
test("token refresh on 1008", async () => {
  let calls = 0;
  const frank = new StarlingClient({
    url: node.wsUrl,
    WebSocket,
    token: async () => {
      calls++;
      return mintToken("frank", { ttlSecs: 2 });
    },
  });
  clients.push(frank);
  const room = frank.join("chat:expiry");
  await room.ready;
  assert.equal(calls, 1);
  const lost = await nextEvent(frank, "disconnected", 6000);
  assert.equal(lost.code, 1008);
  assert.equal(lost.delayMs, 0, "first refresh reconnects at once");
  const back = await nextEvent(room, "resubscribed", 5000);
  assert.equal(calls, 2);
  assert.equal(typeof back.missed, "boolean");
  closeAll();
});

// Guarantee: close 1000 from the server (the user was disconnected through
// the API) ends in state `closed`, without reconnecting.
test("server disconnect (1000) closes for good", async () => {
  const gina = client("gina");
  await gina.join("chat:bye").ready;
  const closed = nextEvent(gina, "closed");
  const response = await fetch(`${node.apiUrl}/api/disconnect`, {
    method: "POST",
    headers: { authorization: "Bearer js-client-test-api-key", "content-type": "application/json" },
    body: JSON.stringify({ user: "gina" }),
  });
  assert.equal((await response.json()).disconnected, 1);
  assert.equal((await closed).code, 1000);
  assert.equal(gina.state, "closed");
  closeAll();
});
