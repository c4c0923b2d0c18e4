// Pusher Channels compatibility on a 3-node cluster (real processes):
// events cross nodes, presence is per user across the whole cluster, and a
// node's death removes its users with member_removed on the survivors,
// and pusher-js reconnects to a node that comes back.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connectClient, eventually, next, record, serverSdk, startPusherNodes, subscribe } from "./support.js";

let cluster;
const clients = [];

async function client(node, options) {
  const c = await connectClient(node, options);
  clients.push(c);
  return c;
}

before(async () => {
  cluster = await startPusherNodes(3);
});

after(async () => {
  for (const c of clients) c.disconnect();
  await cluster?.stop();
});

test("presence is per user across nodes, events cross nodes, a killed node's users are removed once, and pusher-js reconnects", async () => {
  const [n1, n2, n3] = cluster.nodes;
  const sdk = serverSdk(n1);

  // The watcher is on node 1; ada has a connection on node 2 and one on node 3.
  const watcher = await client(n1, { user: "watcher" });
  const watched = await subscribe(watcher, "presence-team");
  const added = record(watched, "pusher:member_added");
  const removed = record(watched, "pusher:member_removed");

  const onTwo = await client(n2, { user: "ada", userInfo: { name: "Ada" } });
  const channelTwo = await subscribe(onTwo, "presence-team");
  const onThree = await client(n3, { user: "ada", userInfo: { name: "Ada" } });
  const channelThree = await subscribe(onThree, "presence-team");
  assert.equal(channelThree.members.count, 2, "node 3 sees the users of every node");

  // An event triggered on node 1's API reaches the subscribers of every
  // node; being after both of ada's joins, it comes after their effects.
  const onNodeTwo = next(channelTwo, "marker");
  const onNodeThree = next(channelThree, "marker");
  const onNodeOne = next(watched, "marker");
  await sdk.trigger("presence-team", "marker", { tag: "joined" });
  assert.deepEqual(await Promise.all([onNodeOne, onNodeTwo, onNodeThree]), [{ tag: "joined" }, { tag: "joined" }, { tag: "joined" }]);
  assert.deepEqual(added.map((e) => e.data.id), ["ada"], "one member_added for ada's two connections");

  // Client events cross nodes too, named by user.
  const typing = next(watched, "client-typing");
  channelTwo.trigger("client-typing", { on: 2 });
  assert.deepEqual(await typing, { on: 2 });

  // kill -9 node 3: ada is still connected through node 2, so nobody is removed.
  await n3.kill();
  const users = async () => (await (await sdk.get({ path: "/channels/presence-team", params: { info: "subscription_count" } })).json());
  await eventually("node 3's connection to be evicted", async () => (await users()).subscription_count === 2, 20000);
  const marker = next(watched, "marker");
  await sdk.trigger("presence-team", "marker", { tag: "after-kill" });
  await marker;
  assert.equal(removed.length, 0, "ada keeps a connection on node 2");

  // Node 3 comes back: pusher-js on it reconnects and subscribes again by
  // itself, and gets events again; ada never left, so no member_added.
  await cluster.restart(2);
  await cluster.leader();
  await eventually("ada's client to resubscribe on node 3", async () => (await users()).subscription_count === 3, 20000);
  const back = next(channelThree, "marker", "an event on the reconnected client");
  const watcherMarker = next(watched, "marker");
  await sdk.trigger("presence-team", "marker", { tag: "reconnected" });
  assert.deepEqual(await back, { tag: "reconnected" });
  await watcherMarker;
  assert.equal(added.length, 1, "ada was never gone");

  // Ada closes the node 3 client; then node 2, her last connection, dies.
  onThree.disconnect();
  await eventually("ada's node 3 client to leave", async () => (await users()).subscription_count === 2);
  const gone = next(watched, "pusher:member_removed", "member_removed for ada");
  await n2.kill();
  assert.deepEqual(await gone, { id: "ada", info: { name: "Ada" } });
  assert.equal(watched.members.count, 1);
  assert.equal(removed.length, 1);
});
