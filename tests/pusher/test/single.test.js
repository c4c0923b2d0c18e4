// Pusher Channels compatibility on one node, with the real client and
// server libraries: pusher-js 8 (in Node) and the `pusher` server SDK.
//
// A guarantee that something is NOT delivered is checked with a marker:
// the node sends a channel's messages in the order it sequenced them, so
// once a later marker event has arrived, an earlier event that was going
// to arrive would have.

import assert from "node:assert/strict";
import { createHash, createHmac } from "node:crypto";
import { after, before, describe, test } from "node:test";

import {
  APP, OTHER_APP, connectClient, eventually, next, record, serverSdk, startPusherNodes, subscribe, within,
} from "./support.js";
import { API_KEY } from "../../../clients/js/test/harness.js";

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

/** A marker event on `channel`, and waits until `client` has it. */
async function marker(channelObject, sdk, channel, tag) {
  const arrived = next(channelObject, "marker", `marker ${tag}`);
  await sdk.trigger(channel, "marker", { tag });
  const data = await arrived;
  assert.equal(data.tag, tag);
}

describe("pusher-js on one node", () => {
  test("a public channel gets the events the HTTP API triggers, with their data", async () => {
    const c = await client();
    assert.match(c.connection.socket_id, /^\d+\.\d+$/, "socket_id as the SDKs check it");
    const channel = await subscribe(c, "news");
    const got = next(channel, "headline");
    const response = await serverSdk(node).trigger("news", "headline", { text: "hello", n: 1 });
    assert.equal(response.status, 200);
    assert.deepEqual(await got, { text: "hello", n: 1 });
  });

  test("private channels need a valid signature; a bad one is a subscription_error with status 401", async () => {
    const good = await client();
    await subscribe(good, "private-orders");

    const forged = await connectClient(node, { app: { ...APP, secret: "not-the-secret" } });
    clients.push(forged);
    const channel = forged.subscribe("private-orders");
    const error = await next(channel, "pusher:subscription_error");
    assert.equal(error.status, 401);
    assert.equal(error.type, "AuthError");
  });

  test("presence is per user: one member_added for a user's first connection, member_removed after its last", async () => {
    const watcher = await client({ user: "watcher" });
    const watched = await subscribe(watcher, "presence-lobby");
    const added = record(watched, "pusher:member_added");
    const removed = record(watched, "pusher:member_removed");
    const sdk = serverSdk(node);

    const first = await client({ user: "ada", userInfo: { name: "Ada" } });
    const firstChannel = await subscribe(first, "presence-lobby");
    assert.equal(firstChannel.members.count, 2, "the new member sees both users");
    assert.deepEqual(firstChannel.members.get("watcher").info, {});
    const second = await client({ user: "ada", userInfo: { name: "Ada" } });
    const secondChannel = await subscribe(second, "presence-lobby");
    assert.equal(secondChannel.members.count, 2, "ada's second connection is not a second member");

    await marker(watched, sdk, "presence-lobby", "after-joins");
    assert.deepEqual(added.map((e) => e.data), [{ id: "ada", info: { name: "Ada" } }]);
    assert.equal(watched.members.count, 2);

    const users = async () => (await sdk.get({ path: "/channels/presence-lobby/users" }).then((r) => r.json())).users;
    assert.deepEqual((await users()).map((u) => u.id).sort(), ["ada", "watcher"]);

    first.disconnect();
    await eventually("ada's first connection to leave", async () => {
      const info = await sdk.get({ path: "/channels/presence-lobby", params: { info: "subscription_count,user_count" } });
      const body = await info.json();
      return body.subscription_count === 2 && body.user_count === 2;
    });
    await marker(watched, sdk, "presence-lobby", "after-first-leave");
    assert.equal(removed.length, 0, "ada still has a connection");

    const gone = next(watched, "pusher:member_removed");
    second.disconnect();
    assert.deepEqual(await gone, { id: "ada", info: { name: "Ada" } });
    assert.equal(watched.members.count, 1);
    assert.equal(removed.length, 1);
  });

  test("client events reach the other subscribers, never the sender, and name the user on presence channels", async () => {
    const sdk = serverSdk(node);
    const alice = await client({ user: "alice" });
    const bob = await client({ user: "bob" });
    const aliceChannel = await subscribe(alice, "presence-chat");
    const bobChannel = await subscribe(bob, "presence-chat");
    const echoed = record(aliceChannel, "client-typing");
    const got = new Promise((resolve) => bobChannel.bind("client-typing", (data, metadata) => resolve({ data, metadata })));

    assert.ok(aliceChannel.trigger("client-typing", { typing: true }));
    const { data, metadata } = await within("bob to get the client event", got);
    assert.deepEqual(data, { typing: true });
    assert.equal(metadata.user_id, "alice");
    await marker(aliceChannel, sdk, "presence-chat", "after-client-event");
    assert.equal(echoed.length, 0, "the sender does not get its own client event");

    // Client events are refused on public channels.
    const open = await subscribe(alice, "open-channel");
    const refusal = next(alice.connection, "error");
    open.trigger("client-nope", {});
    const error = await refusal;
    assert.match(JSON.stringify(error), /private and presence/);
  });

  test("an event triggered with a socket_id skips that connection", async () => {
    const sdk = serverSdk(node);
    const sender = await client();
    const other = await client();
    const senderChannel = await subscribe(sender, "room-7");
    const otherChannel = await subscribe(other, "room-7");
    const senderSeen = record(senderChannel, "update");
    const otherGot = next(otherChannel, "update");
    await sdk.trigger("room-7", "update", { v: 1 }, { socket_id: sender.connection.socket_id });
    assert.deepEqual(await otherGot, { v: 1 });
    await marker(senderChannel, sdk, "room-7", "after-update");
    assert.equal(senderSeen.length, 0);
  });

  test("batch_events triggers each event; channels lists occupied channels with counts", async () => {
    const sdk = serverSdk(node);
    const c = await client({ user: "lister" });
    const a = await subscribe(c, "batch-a");
    const b = await subscribe(c, "batch-b");
    await subscribe(c, "presence-listed");
    const gotA = next(a, "one");
    const gotB = next(b, "two");
    const response = await sdk.triggerBatch([
      { channel: "batch-a", name: "one", data: JSON.stringify({ k: "a" }) },
      { channel: "batch-b", name: "two", data: JSON.stringify({ k: "b" }) },
    ]);
    assert.equal(response.status, 200);
    assert.deepEqual([await gotA, await gotB], [{ k: "a" }, { k: "b" }]);

    const all = await (await sdk.get({ path: "/channels", params: { filter_by_prefix: "batch-", info: "subscription_count" } })).json();
    assert.deepEqual(all, { channels: { "batch-a": { subscription_count: 1 }, "batch-b": { subscription_count: 1 } } });
    const presence = await (await sdk.get({ path: "/channels", params: { filter_by_prefix: "presence-listed", info: "user_count" } })).json();
    assert.deepEqual(presence, { channels: { "presence-listed": { user_count: 1 } } });
    const vacant = await (await sdk.get({ path: "/channels/nobody-here" })).json();
    assert.deepEqual(vacant, { occupied: false });
    await assert.rejects(sdk.get({ path: "/channels", params: { info: "user_count" } }).then((r) => {
      if (!r.ok) throw new Error(String(r.status));
    }), /400/, "user_count needs a presence- prefix");
  });

  test("the HTTP API refuses a wrong secret, an unknown key, a stale timestamp and a tampered body with 401", async () => {
    const port = new URL(node.apiUrl).port;
    const wrongSecret = serverSdk(node, { ...APP, secret: "wrong" });
    await assert.rejects(wrongSecret.trigger("news", "x", {}), (error) => error.status === 401 && /Invalid signature/.test(error.body));
    const wrongKey = serverSdk(node, { ...APP, key: "nobody" });
    await assert.rejects(wrongKey.trigger("news", "x", {}), (error) => error.status === 401 && /auth_key/.test(error.body));

    const signed = (body, { timestamp = Math.floor(Date.now() / 1000), md5Of = body } = {}) => {
      const md5 = createHash("md5").update(md5Of).digest("hex");
      const query = `auth_key=${APP.key}&auth_timestamp=${timestamp}&auth_version=1.0&body_md5=${md5}`;
      const path = `/apps/${APP.id}/events`;
      const signature = createHmac("sha256", APP.secret).update(`POST\n${path}\n${query}`).digest("hex");
      return fetch(`http://127.0.0.1:${port}${path}?${query}&auth_signature=${signature}`, {
        method: "POST", headers: { "content-type": "application/json" }, body,
      });
    };
    const body = JSON.stringify({ name: "x", channel: "news", data: "{}" });
    assert.equal((await signed(body)).status, 200, "a correctly signed request passes");
    const stale = await signed(body, { timestamp: Math.floor(Date.now() / 1000) - 601 });
    assert.equal(stale.status, 401);
    assert.match(await stale.text(), /Timestamp expired/);
    const tampered = await signed(JSON.stringify({ name: "y", channel: "news", data: "{}" }), { md5Of: body });
    assert.equal(tampered.status, 401);
    assert.match(await tampered.text(), /body_md5/);
  });

  test("apps are isolated from each other and from Starling-protocol rooms", async () => {
    const sdk = serverSdk(node);
    const c = await client();
    const channel = await subscribe(c, "shared-name");
    const leaked = record(channel, "leak");
    await serverSdk(node, OTHER_APP).trigger("shared-name", "leak", { from: "app-2" });
    await marker(channel, sdk, "shared-name", "after-other-app");
    assert.equal(leaked.length, 0, "app-2's channel of the same name is another channel");

    const starling = await fetch(`${node.apiUrl}/api/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ room: "pusher-app-1:shared-name", data: { from: "starling" } }),
    });
    assert.equal(starling.status, 403, "the Starling API cannot reach an app's channels");
    await marker(channel, sdk, "shared-name", "after-starling");
    assert.equal(leaked.length, 0);
  });

  test("an unknown app key is refused with pusher:error 4001, and pusher-js does not reconnect", async () => {
    const port = Number(new URL(node.wsUrl).port);
    const { default: PusherClient } = await import("pusher-js");
    const c = new PusherClient("no-such-key", {
      cluster: "local", wsHost: "127.0.0.1", wsPort: port, forceTLS: false, enabledTransports: ["ws"], disableStats: true,
    });
    clients.push(c);
    const errors = [];
    c.connection.bind("error", (error) => errors.push(error));
    // pusher-js reports the pusher:error, then the 4001 close makes it
    // disconnect for good ("refused"), rather than retry ("connecting").
    await eventually("pusher-js to give up", () => c.connection.state === "disconnected");
    assert.equal(errors[0]?.error?.data?.code, 4001, JSON.stringify(errors));
    assert.match(errors[0].error.data.message, /no-such-key/);
  });
});
