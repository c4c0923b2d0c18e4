// Pusher Channels extras on one node, with the real client and server
// libraries: cache channels, the `info` of triggered events, and the
// per-app limits of `[[apps]]`.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { APP, connectClient, next, record, serverSdk, startPusherNodes, subscribe } from "./support.js";

let cluster;
let node;
const clients = [];

async function client(options) {
  const c = await connectClient(node, options);
  clients.push(c);
  return c;
}

before(async () => {
  cluster = await startPusherNodes(1);
  node = cluster.nodes[0];
});

after(async () => {
  for (const c of clients) c.disconnect();
  await cluster?.stop();
});

/**
 * Subscribes and resolves with the channel and the channel's events in
 * the order they came, from subscription_succeeded on, until `until`
 * (an event name) arrives.
 */
async function subscribeAndRecord(c, name, until) {
  const channel = c.channel(name) ?? c.subscribe(name);
  const seen = [];
  const done = new Promise((resolve) => {
    channel.bind_global((event, data) => {
      seen.push({ event, data });
      if (event === until) resolve();
    });
  });
  if (!c.channel(name).subscribed) c.subscribe(name);
  await done;
  return { channel, seen };
}

describe("cache channels", () => {
  for (const name of ["cache-prices", "private-cache-prices", "presence-cache-prices", "private-encrypted-cache-prices"]) {
    test(`${name}: a new subscriber gets pusher:cache_miss when nothing is cached, else the last event right after subscription_succeeded`, async () => {
      const sdk = serverSdk(node);
      const first = await client({ user: "first" });
      const { seen: firstSeen } = await subscribeAndRecord(first, name, "pusher:cache_miss");
      assert.deepEqual(firstSeen.map((e) => e.event), ["pusher:subscription_succeeded", "pusher:cache_miss"]);

      // private-encrypted-: the SDK encrypts, pusher-js decrypts, the
      // server passes the ciphertext through (and caches it as it is).
      await sdk.trigger(name, "price", { v: 1 });
      await sdk.trigger(name, "price", { v: 2 });

      const second = await client({ user: "second" });
      const { seen } = await subscribeAndRecord(second, name, "price");
      assert.deepEqual(seen.map((e) => e.event), ["pusher:subscription_succeeded", "price"]);
      assert.deepEqual(seen[1].data, { v: 2 }, "only the last event");
    });
  }

  test("a channel that is not a cache channel replays nothing and sends no cache_miss", async () => {
    const sdk = serverSdk(node);
    const first = await client();
    await subscribe(first, "plain-prices");
    await sdk.trigger("plain-prices", "price", { v: 1 });
    const second = await client();
    const misses = [];
    const channel = second.subscribe("plain-prices");
    channel.bind("pusher:cache_miss", () => misses.push(1));
    const prices = record(channel, "price");
    await next(channel, "pusher:subscription_succeeded");
    const marker = next(channel, "marker");
    await sdk.trigger("plain-prices", "marker", {});
    await marker;
    assert.deepEqual(prices, []);
    assert.deepEqual(misses, []);
  });
});

describe("info on triggered events", () => {
  test("POST /events with info=subscription_count,user_count answers the channels' counts", async () => {
    const sdk = serverSdk(node);
    const ada = await client({ user: "ada" });
    const adaAgain = await client({ user: "ada" });
    const bob = await client({ user: "bob" });
    for (const c of [ada, adaAgain, bob]) await subscribe(c, "presence-counted");
    await subscribe(ada, "counted");

    const response = await sdk.trigger(["presence-counted", "counted", "nobody-here"], "ping", {}, {
      info: "subscription_count,user_count",
    });
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), {
      channels: {
        "presence-counted": { subscription_count: 3, user_count: 2 },
        counted: { subscription_count: 1 },
        "nobody-here": { subscription_count: 0 },
      },
    });

    const plain = await sdk.trigger("counted", "ping", {});
    assert.deepEqual(await plain.json(), {}, "no info asked, none given");
    await assert.rejects(sdk.trigger("counted", "ping", {}, { info: "bogus" }), (error) => error.status === 400);
  });

  test("batch_events with a per-event info answers each event's channel counts", async () => {
    const sdk = serverSdk(node);
    const c = await client({ user: "dan" });
    await subscribe(c, "presence-batch");
    const response = await sdk.triggerBatch([
      { channel: "presence-batch", name: "a", data: {}, info: "user_count,subscription_count" },
      { channel: "presence-batch", name: "b", data: {} },
      { channel: "batch-empty", name: "c", data: {}, info: "subscription_count" },
    ]);
    assert.deepEqual(await response.json(), {
      batch: [{ user_count: 1, subscription_count: 1 }, {}, { subscription_count: 0 }],
    });
  });
});
