// The client against a real 3-node cluster (three `starling` processes):
// chat across nodes, and failover when the client's node is `kill -9`ed:
// a client given every node's URL lands on another node, re-joins its room
// and keeps chatting. Prints the time from kill to re-joined (p50/p99/max).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";

import { StarlingClient } from "../src/starling.js";
import { mintToken, nextEvent, startNodes } from "./harness.js";

/** Kill rounds and clients on the killed node per round (samples = product). */
const ROUNDS = Number(process.env.FAILOVER_ROUNDS || 4);
const CLIENTS = Number(process.env.FAILOVER_CLIENTS || 20);
/** The goal of issue 4, with the client's default settings. */
const GOAL_P99_MS = 3000;

let cluster;
before(async () => {
  cluster = await startNodes(3);
});
after(async () => {
  await cluster?.stop();
});

function client(user, urls, options = {}) {
  return new StarlingClient({ urls, token: () => mintToken(user), WebSocket, ...options });
}

// Guarantee: two clients on different nodes share a room: presence and
// messages cross nodes in both directions.
test("chat across two nodes", async () => {
  const [n1, n2] = cluster.nodes;
  const alice = client("alice", [n1.wsUrl]);
  const bob = client("bob", [n2.wsUrl]);
  try {
    const roomA = alice.join("chat:across");
    await roomA.ready;
    const bobArrives = nextEvent(roomA, "joined");
    const roomB = bob.join("chat:across");
    await roomB.ready;
    assert.notEqual(alice.session.node, bob.session.node);
    assert.equal((await bobArrives).node, n2.name);
    const atBob = nextEvent(roomB, "message");
    await roomA.publish({ text: "from node-1" });
    assert.deepEqual((await atBob).data, { text: "from node-1" });
    const atAlice = nextEvent(roomA, "message", 10000, (m) => m.from.user === "bob");
    await roomB.publish({ text: "from node-2" });
    assert.deepEqual((await atAlice).data, { text: "from node-2" });
  } finally {
    alice.close();
    bob.close();
  }
});

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

// Guarantee: with default settings, every client whose node is killed
// (kill -9) re-joins its room on another live node, and keeps chatting;
// the kill-to-re-joined time is under 3 s at p99.
test("failover: clients of a killed node re-join elsewhere", async () => {
  const samples = [];
  const leaderSamples = [];
  const chatBack = [];
  for (let round = 0; round < ROUNDS; round++) {
    const leader = await cluster.leader(3);
    // Rounds alternate: a follower's node, then the Raft leader's node.
    const killLeader = round % 2 === 1;
    const victimIndex = cluster.nodes.findIndex((n) => (n.name === leader) === killLeader);
    const victim = cluster.nodes[victimIndex];
    const others = cluster.nodes.filter((n) => n !== victim);
    const urls = [victim.wsUrl, ...others.map((n) => n.wsUrl)];
    const room = `chat:failover-${round}`;
    const clients = Array.from({ length: CLIENTS }, (_, i) => client(`user-${round}-${i}`, urls));
    const observer = client(`observer-${round}`, [others[0].wsUrl]);
    try {
      const rooms = clients.map((c) => c.join(room));
      await Promise.all(rooms.map((r) => r.ready));
      const observed = observer.join(room);
      await observed.ready;
      assert.ok(clients.every((c) => c.session.node === victim.name));
      const rejoined = rooms.map((r) => nextEvent(r, "resubscribed", 15000).then(() => Date.now()));
      const killedAt = Date.now();
      await victim.kill();
      const times = (await Promise.all(rejoined)).map((t) => t - killedAt);
      for (const c of clients) assert.notEqual(c.session.node, victim.name, "landed on another node");
      (killLeader ? leaderSamples : samples).push(...times);
      // Still chatting: a moved client's message reaches the observer (the
      // publish is retried while the room's owner moves off the dead node).
      const heard = nextEvent(observed, "message", 10000, (m) => m.data.round === round);
      await rooms[0].publish({ round });
      assert.equal((await heard).from.user, `user-${round}-0`);
      chatBack.push(Date.now() - killedAt);
    } catch (error) {
      console.error(cluster.dump());
      throw error;
    } finally {
      for (const c of [...clients, observer]) c.close();
    }
    await cluster.restart(victimIndex);
  }
  const all = [...samples, ...leaderSamples].sort((a, b) => a - b);
  const report = (name, list) => {
    const sorted = [...list].sort((a, b) => a - b);
    return `${name}: n=${sorted.length} p50=${percentile(sorted, 50)} ms p99=${percentile(sorted, 99)} ms max=${sorted.at(-1)} ms`;
  };
  console.log(`kill -9 to re-joined on another node (default client settings)`);
  console.log(`  ${report("follower killed", samples)}`);
  console.log(`  ${report("leader killed", leaderSamples)}`);
  console.log(`  ${report("all", all)}`);
  console.log(`kill -9 to a moved client's publish delivered (room owner moved): ${chatBack.join(", ")} ms`);
  assert.ok(percentile(all, 99) < GOAL_P99_MS, `p99 ${percentile(all, 99)} ms over ${GOAL_P99_MS} ms`);
});
