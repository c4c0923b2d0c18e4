// Pusher Channels extras on a 3-node cluster (real processes): a cache
// channel's last event published through another node reaches a new
// subscriber, and terminate_connections closes a user's connections on
// every node with 4009, so that pusher-js does not reconnect.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connectClient, eventually, next, record, serverSdk, startPusherNodes, subscribe, within } from "./support.js";

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

test("a cache channel's last event, published through another node, reaches a new subscriber on a third node", async () => {
  const [n1, n2, n3] = cluster.nodes;
  const first = await client(n1);
  const firstChannel = first.subscribe("cache-ticker");
  const missed = next(firstChannel, "pusher:cache_miss");
  await next(firstChannel, "pusher:subscription_succeeded");
  await missed;

  const sdk = serverSdk(n2);
  await sdk.trigger("cache-ticker", "tick", { v: 1 });
  await sdk.trigger("cache-ticker", "tick", { v: 2 });

  const late = await client(n3);
  const channel = late.subscribe("cache-ticker");
  const ticks = record(channel, "tick");
  const misses = record(channel, "pusher:cache_miss");
  await next(channel, "pusher:subscription_succeeded");
  await eventually("the cached tick", () => ticks.length === 1);
  assert.deepEqual(ticks[0].data, { v: 2 }, "the last event only");

  // Anything after it arrives live, once, after the cached one.
  const marker = next(channel, "marker");
  await sdk.trigger("cache-ticker", "marker", {});
  await marker;
  assert.deepEqual(ticks.map((t) => t.data), [{ v: 2 }]);
  assert.deepEqual(misses, []);
});

test("terminate_connections closes every connection of the user on every node with 4009 and pusher-js stays disconnected", async () => {
  const [n1, n2, n3] = cluster.nodes;
  const watcher = await client(n2, { user: "bob" });
  const watched = await subscribe(watcher, "presence-staff");
  const removed = record(watched, "pusher:member_removed");

  // ada: signed in (no channel) on node 1, in the presence channel on nodes 2 and 3.
  const signedIn = await client(n1, { user: "ada" });
  signedIn.signin();
  await within("ada's sign-in", signedIn.user.signinDonePromise);
  const onTwo = await client(n2, { user: "ada" });
  await subscribe(onTwo, "presence-staff");
  const onThree = await client(n3, { user: "ada" });
  await subscribe(onThree, "presence-staff");
  const bystander = await client(n3, { user: "carol" });
  await subscribe(bystander, "presence-staff");

  const adas = [signedIn, onTwo, onThree];
  const errors = adas.map((c) => within("ada's close error", new Promise((resolve) => {
    c.connection.bind("error", (error) => resolve(error));
  })));
  const response = await serverSdk(n1).terminateUserConnections("ada");
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), {});

  for (const error of await Promise.all(errors)) {
    assert.equal(error.data.code, 4009);
  }
  await eventually("ada's connections to be disconnected", () => adas.every((c) => c.connection.state === "disconnected"));
  await eventually("ada to leave presence-staff", () => removed.length === 1);
  assert.equal(removed[0].data.id, "ada");

  // The others stay, and pusher-js did not bring ada back.
  const marker = next(watched, "marker");
  await serverSdk(n3).trigger("presence-staff", "marker", {});
  await marker;
  assert.equal(watcher.connection.state, "connected");
  assert.equal(bystander.connection.state, "connected");
  assert.deepEqual(watched.members.count, 2);
  assert.ok(adas.every((c) => c.connection.state === "disconnected"), "no reconnect");
});
