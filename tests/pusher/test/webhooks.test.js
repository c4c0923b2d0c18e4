// Pusher webhooks against a receiver that checks every request's
// signature with the `pusher` server SDK (`pusher.webhook(...).isValid()`):
// on one node, every event type, retries after a failed request, and a
// receiver that asked for some events only; on a 3-node cluster, events
// committed while the receiver was down and the sending node (the leader)
// was then killed with kill -9 arrive exactly once, from the new leader,
// followed by the dead node's users' removal.

import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, test } from "node:test";

import PusherServer from "pusher";

import { startNodes } from "../../../clients/js/test/harness.js";
import { connectClient, eventually, serverSdk, subscribe } from "./support.js";

const HOOK_APP = { id: "hooks", key: "hooks-key", secret: "hooks-secret-0123456789" };
const verifier = new PusherServer({ appId: HOOK_APP.id, key: HOOK_APP.key, secret: HOOK_APP.secret });

/**
 * A webhook receiver: answers `failing` requests with 503, counts a
 * request with a bad signature, and records the events of every valid
 * request it accepted (per path).
 */
async function startReceiver() {
  const receiver = { accepted: {}, refused: [], badSignatures: 0, failing: false };
  const server = createServer((request, response) => {
    let body = "";
    request.setEncoding("utf8");
    request.on("data", (chunk) => (body += chunk));
    request.on("end", () => {
      const webhook = verifier.webhook({ headers: request.headers, rawBody: body });
      if (!webhook.isValid() || request.headers["content-type"] !== "application/json") {
        receiver.badSignatures += 1;
        response.writeHead(401).end();
        return;
      }
      const events = webhook.getEvents();
      assert.ok(Number.isInteger(webhook.getTime().getTime()), "time_ms is a number");
      if (receiver.failing) {
        receiver.refused.push(...events);
        response.writeHead(503).end();
        return;
      }
      (receiver.accepted[request.url] ??= []).push(...events);
      response.writeHead(200).end("{}");
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  receiver.url = (path) => `http://127.0.0.1:${server.address().port}${path}`;
  receiver.events = (path = "/hooks") => receiver.accepted[path] ?? [];
  receiver.close = () => new Promise((resolve) => server.close(resolve));
  return receiver;
}

function hookApp(receiver) {
  return `
[[apps]]
id = "${HOOK_APP.id}"
key = "${HOOK_APP.key}"
secret = "${HOOK_APP.secret}"
enable_client_messages = true

[[apps.webhooks]]
url = "${receiver.url("/hooks")}"

[[apps.webhooks]]
url = "${receiver.url("/members-only")}"
events = ["member_added", "member_removed"]
`;
}

/** Events without the fields a test does not pin down. */
const brief = (events) => events.map(({ name, channel, user_id }) => (user_id === undefined ? { name, channel } : { name, channel, user_id }));

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

test("one node sends every event type once, signed, retried after a failure, and filtered per receiver", async () => {
  const receiver = await startReceiver();
  cleanups.push(receiver.close);
  const cluster = await startNodes(1, { extraConfig: hookApp(receiver) });
  cleanups.push(() => cluster.stop());
  const [node] = cluster.nodes;

  const ada = await connectClient(node, { app: HOOK_APP, user: "ada" });
  cleanups.push(() => ada.disconnect());
  const channel = await subscribe(ada, "presence-room");
  await eventually("occupied and member_added", () => receiver.events().length === 2);

  // The receiver fails for a while: the client event's request is retried
  // until it is accepted, and then arrives once.
  receiver.failing = true;
  channel.trigger("client-typing", { text: "hi" });
  await eventually("a refused client_event request", () => receiver.refused.length > 0);
  receiver.failing = false;
  await eventually("the client_event after retries", () => receiver.events().length === 3);

  ada.unsubscribe("presence-room");
  await eventually("member_removed and vacated", () => receiver.events().length === 5);
  assert.deepEqual(brief(receiver.events()), [
    { name: "channel_occupied", channel: "presence-room" },
    { name: "member_added", channel: "presence-room", user_id: "ada" },
    { name: "client_event", channel: "presence-room", user_id: "ada" },
    { name: "member_removed", channel: "presence-room", user_id: "ada" },
    { name: "channel_vacated", channel: "presence-room" },
  ]);
  const clientEvent = receiver.events()[2];
  assert.equal(clientEvent.event, "client-typing");
  assert.deepEqual(JSON.parse(clientEvent.data), { text: "hi" });
  assert.equal(clientEvent.socket_id, ada.connection.socket_id);
  assert.deepEqual(brief(receiver.events("/members-only")), [
    { name: "member_added", channel: "presence-room", user_id: "ada" },
    { name: "member_removed", channel: "presence-room", user_id: "ada" },
  ]);
  // A cache channel with nothing cached: cache_miss, from the subscriber's node.
  await subscribe(ada, "cache-news");
  await eventually("cache_miss and occupied", () => receiver.events().length === 7);
  assert.deepEqual(
    brief(receiver.events().slice(5)).sort((a, b) => a.name.localeCompare(b.name)),
    [{ name: "cache_miss", channel: "cache-news" }, { name: "channel_occupied", channel: "cache-news" }],
  );
  assert.equal(receiver.badSignatures, 0);
});

test("events committed while the receiver is down survive a kill -9 of the sending leader and arrive exactly once", async () => {
  const receiver = await startReceiver();
  cleanups.push(receiver.close);
  const cluster = await startNodes(3, { extraConfig: hookApp(receiver) });
  cleanups.push(() => cluster.stop());
  const leaderName = await cluster.leader();
  const leader = cluster.nodes.find((n) => n.name === leaderName);
  const [one, two] = cluster.nodes.filter((n) => n !== leader);

  // A user on each node, each in a channel of its own.
  const clients = {};
  for (const [user, node] of [["on-leader", leader], ["on-one", one], ["on-two", two]]) {
    clients[user] = await connectClient(node, { app: HOOK_APP, user });
    cleanups.push(() => clients[user].disconnect());
    await subscribe(clients[user], `presence-${user}`);
  }
  await eventually("three channels occupied, three members added", () => receiver.events().length === 6);

  // The receiver goes down; two more changes commit and wait in the
  // replicated outbox (the leader keeps retrying them).
  receiver.failing = true;
  clients["on-one"].unsubscribe("presence-on-one");
  // (Pusher has no reply to an unsubscribe: the channel's state says when it committed.)
  const sdk = serverSdk(one, HOOK_APP);
  await eventually("the unsubscribe to commit", async () => !(await (await sdk.get({ path: "/channels/presence-on-one" })).json()).occupied);
  await subscribe(clients["on-two"], "presence-late");
  const pending = [
    { name: "member_removed", channel: "presence-on-one", user_id: "on-one" },
    { name: "channel_vacated", channel: "presence-on-one" },
    { name: "channel_occupied", channel: "presence-late" },
    { name: "member_added", channel: "presence-late", user_id: "on-two" },
  ];
  // The leader is retrying the first of them (the later ones wait behind).
  await eventually("the leader to try the unsubscribe's events", () => {
    const tried = JSON.stringify(brief(receiver.refused));
    return pending.slice(0, 2).every((e) => tried.includes(JSON.stringify(e)));
  });

  // The sender dies before any of them was accepted; the receiver comes back.
  await leader.kill();
  receiver.failing = false;
  await eventually(
    "the pending events and the dead node's user's removal",
    () => receiver.events().length >= 6 + pending.length + 2,
    20000,
  );
  // Nothing more is coming: a marker change after it arrives last.
  clients["on-two"].unsubscribe("presence-on-two");
  await eventually("the marker's events", () => receiver.events().some((e) => e.channel === "presence-on-two" && e.name === "channel_vacated"), 20000);

  const events = brief(receiver.events());
  assert.deepEqual(events.slice(6, 6 + pending.length), pending, "the pending events, once, in commit order");
  assert.deepEqual(events.slice(6 + pending.length), [
    { name: "member_removed", channel: "presence-on-leader", user_id: "on-leader" },
    { name: "channel_vacated", channel: "presence-on-leader" },
    { name: "member_removed", channel: "presence-on-two", user_id: "on-two" },
    { name: "channel_vacated", channel: "presence-on-two" },
  ]);
  const seen = new Set();
  for (const e of receiver.events()) {
    const key = JSON.stringify(e);
    assert.ok(!seen.has(key) || e.name === "client_event", `delivered twice: ${key}`);
    seen.add(key);
  }
  assert.equal(receiver.badSignatures, 0);
});
