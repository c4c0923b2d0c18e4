// Pusher Channels extras on one node, with the real client and server
// libraries: cache channels, the `info` of triggered events, and the
// per-app limits of `[[apps]]`.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { connectClient, next, record, serverSdk, startPusherNodes, subscribe } from "./support.js";

let cluster;
let node;
const clients = [];

async function client(options) {
  const c = await connectClient(node, options);
  clients.push(c);
  return c;
}

/** An app with small limits. */
const LIMITED = { id: "app-3", key: "app-3-key", secret: "app-3-secret-0123456789" };

before(async () => {
  cluster = await startPusherNodes(1, {
    extraConfig: `
[[apps]]
id = "${LIMITED.id}"
key = "${LIMITED.key}"
secret = "${LIMITED.secret}"
enable_client_messages = true
max_message_bytes = 100
max_channel_name_bytes = 20
max_event_name_bytes = 10
max_event_channels_at_once = 2
max_event_batch_size = 2
max_presence_members_per_channel = 2
max_presence_member_bytes = 30
max_channels_per_connection = 3
`,
  });
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

describe("per-app limits", () => {
  /** The subscription_error of subscribing `c` to `name`. */
  function refusal(c, name) {
    const channel = c.subscribe(name);
    return next(channel, "pusher:subscription_error", `subscription_error on ${name}`);
  }

  test("a channel name over max_channel_name_bytes is refused, on subscribe and on the API", async () => {
    const c = await client({ app: LIMITED });
    await subscribe(c, "x".repeat(20));
    const error = await refusal(c, "x".repeat(21));
    assert.equal(error.status, 400);
    assert.equal(error.type, "InvalidChannel");
    const sdk = serverSdk(node, LIMITED);
    await assert.rejects(sdk.trigger("y".repeat(21), "e", {}), (e) => e.status === 400);
  });

  test("max_channels_per_connection: one more subscription is refused with LimitReached 4100", async () => {
    const c = await client({ app: LIMITED });
    for (const name of ["one", "two", "three"]) await subscribe(c, name);
    const error = await refusal(c, "four");
    assert.equal(error.type, "LimitReached");
    assert.equal(error.status, 4100);
    c.unsubscribe("one");
    await subscribe(c, "five"); // a freed slot is taken again
  });

  test("max_presence_members_per_channel counts users: a third user is refused, another connection of a member is not", async () => {
    const ada = await client({ app: LIMITED, user: "ada" });
    const bob = await client({ app: LIMITED, user: "bob" });
    await subscribe(ada, "presence-full");
    await subscribe(bob, "presence-full");
    const carol = await client({ app: LIMITED, user: "carol" });
    const error = await refusal(carol, "presence-full");
    assert.equal(error.type, "LimitReached");
    assert.equal(error.status, 4100);
    const adaAgain = await client({ app: LIMITED, user: "ada" });
    const channel = await subscribe(adaAgain, "presence-full");
    assert.equal(channel.members.count, 2);
  });

  test("max_presence_member_bytes: a larger user_info is refused", async () => {
    const c = await client({ app: LIMITED, user: "dan", userInfo: { name: "d".repeat(40) } });
    const error = await refusal(c, "presence-big");
    assert.equal(error.type, "LimitReached");
    assert.equal(error.status, 400);
  });

  test("the API refuses more channels, events, name or data than the app allows, with Pusher's statuses", async () => {
    const sdk = serverSdk(node, LIMITED);
    await sdk.trigger(["a", "b"], "e", {});
    await assert.rejects(sdk.trigger(["a", "b", "c"], "e", {}), (e) => e.status === 400);
    await assert.rejects(sdk.trigger("a", "e".repeat(11), {}), (e) => e.status === 400);
    await assert.rejects(sdk.trigger("a", "e", { d: "x".repeat(100) }), (e) => e.status === 413);
    const batch = (n) => Array.from({ length: n }, () => ({ channel: "a", name: "e", data: {} }));
    await sdk.triggerBatch(batch(2));
    await assert.rejects(sdk.triggerBatch(batch(3)), (e) => e.status === 400);
  });
});
