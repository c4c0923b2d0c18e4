// Shared setup of the Pusher compatibility tests: real `starling` nodes
// (the JS client's harness) configured with two Pusher apps, pusher-js
// clients pointed at them, and the `pusher` server SDK for their HTTP API.

import PusherClient from "pusher-js";
import PusherServer from "pusher";

import { startNodes, within } from "../../../clients/js/test/harness.js";

export { eventually, within } from "../../../clients/js/test/harness.js";

export const APP = { id: "app-1", key: "app-1-key", secret: "app-1-secret-0123456789" };
export const OTHER_APP = { id: "app-2", key: "app-2-key", secret: "app-2-secret-0123456789" };

const APPS = `
[[apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
enable_client_messages = true

[[apps]]
id = "${OTHER_APP.id}"
key = "${OTHER_APP.key}"
secret = "${OTHER_APP.secret}"
`;

/** Starts `size` nodes serving both apps. */
export function startPusherNodes(size, options = {}) {
  return startNodes(size, { ...options, extraConfig: APPS + (options.extraConfig || "") });
}

/** The key `private-encrypted-` channels' payloads are encrypted with (by the SDK; the server never sees it). */
export const ENCRYPTION_MASTER_KEY = Buffer.alloc(32, 7).toString("base64");

/** The `pusher` server SDK for `app` on `node`'s API listener. */
export function serverSdk(node, app = APP) {
  const port = new URL(node.apiUrl).port;
  return new PusherServer({
    appId: app.id, key: app.key, secret: app.secret, host: "127.0.0.1", port, useTLS: false,
    encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY,
  });
}

/**
 * A pusher-js client of `app` connected to `node`, authorising channels
 * and sign-ins with the server SDK as an app's auth endpoint would (for
 * presence channels, as `user`). Resolves once connected.
 */
export async function connectClient(node, { app = APP, user = null, userInfo = {} } = {}) {
  const sdk = serverSdk(node, app);
  const port = Number(new URL(node.wsUrl).port);
  const client = new PusherClient(app.key, {
    cluster: "local",
    wsHost: "127.0.0.1",
    wsPort: port,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const presence = channelName.startsWith("presence-") ? { user_id: user, user_info: userInfo } : undefined;
        callback(null, sdk.authorizeChannel(socketId, channelName, presence));
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => callback(null, sdk.authenticateUser(socketId, { id: user, ...userInfo })),
    },
  });
  await within("pusher-js to connect", new Promise((resolve, reject) => {
    client.connection.bind("connected", resolve);
    client.connection.bind("failed", () => reject(new Error("connection failed")));
  }));
  return client;
}

/** Subscribes and resolves with the channel once `subscription_succeeded`. */
export async function subscribe(client, name) {
  const channel = client.subscribe(name);
  await within(`subscription to ${name}`, new Promise((resolve, reject) => {
    channel.bind("pusher:subscription_succeeded", resolve);
    channel.bind("pusher:subscription_error", (error) => reject(new Error(`subscription_error ${JSON.stringify(error)}`)));
  }));
  return channel;
}

/** Records every emission of `event` on `channel`. */
export function record(channel, event) {
  const seen = [];
  channel.bind(event, (data, metadata) => seen.push({ data, metadata }));
  return seen;
}

/** Resolves with the next emission of `event` on `target` (a channel or a connection). */
export function next(target, event, what = event) {
  return within(what, new Promise((resolve) => {
    const handler = (data) => {
      target.unbind(event, handler);
      resolve(data);
    };
    target.bind(event, handler);
  }));
}
