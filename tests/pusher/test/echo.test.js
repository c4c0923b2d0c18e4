// Laravel Echo 2 (broadcaster "pusher") against one node, as a Laravel
// front end uses it: public and private channels with `.listen`, `.error`
// on a refused authorisation, and presence with here/joining/leaving.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import Echo from "laravel-echo";

import { APP, connectClient, eventually, serverSdk, startPusherNodes, within } from "./support.js";

let cluster;
const echoes = [];

before(async () => {
  cluster = await startPusherNodes(1);
});

after(async () => {
  for (const echo of echoes) echo.disconnect();
  await cluster?.stop();
});

async function echoFor(options) {
  const client = await connectClient(cluster.nodes[0], options);
  const echo = new Echo({ broadcaster: "pusher", key: APP.key, client });
  echoes.push(echo);
  return echo;
}

function once(register, what) {
  return within(what, new Promise((resolve) => register(resolve)));
}

test("Laravel Echo listens on public and private channels and gets .error on a bad authorisation", async () => {
  const sdk = serverSdk(cluster.nodes[0]);
  const echo = await echoFor({ user: "1" });
  const subscribed = once((resolve) => echo.private("orders.1").subscribed(resolve), "private subscription");
  const shipped = once((resolve) => echo.private("orders.1").listen(".OrderShipped", resolve), "OrderShipped");
  await subscribed;
  await sdk.trigger("private-orders.1", "OrderShipped", { order: { id: 1 } });
  assert.deepEqual(await shipped, { order: { id: 1 } });

  const publicSubscribed = once((resolve) => echo.channel("news").subscribed(resolve), "public subscription");
  const news = once((resolve) => echo.channel("news").listen(".Headline", resolve), "Headline");
  await publicSubscribed;
  await sdk.trigger("news", "Headline", { title: "hi" });
  assert.deepEqual(await news, { title: "hi" });

  const forged = await connectClient(cluster.nodes[0], { app: { ...APP, secret: "wrong" } });
  const forgedEcho = new Echo({ broadcaster: "pusher", key: APP.key, client: forged });
  echoes.push(forgedEcho);
  const error = await once((resolve) => forgedEcho.private("orders.1").error(resolve), "Echo .error()");
  assert.equal(error.status, 401);
});

test("Laravel Echo presence: here, joining and leaving, once per user", async () => {
  const first = await echoFor({ user: "1", userInfo: { name: "Taylor" } });
  const here = await once((resolve) => first.join("chat").here(resolve), "here");
  assert.deepEqual(here, [{ name: "Taylor" }]);
  const joining = [];
  const leaving = [];
  first.join("chat").joining((user) => joining.push(user)).leaving((user) => leaving.push(user));

  const second = await echoFor({ user: "2", userInfo: { name: "Jess" } });
  const secondHere = await once((resolve) => second.join("chat").here(resolve), "second here");
  assert.deepEqual(secondHere.map((u) => u.name).sort(), ["Jess", "Taylor"]);
  await eventually("Echo joining()", () => joining.length > 0);
  assert.deepEqual(joining, [{ name: "Jess" }]);

  second.leave("chat");
  await eventually("Echo leaving()", () => leaving.length > 0);
  assert.deepEqual(leaving, [{ name: "Jess" }]);
});
