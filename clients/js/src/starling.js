// Starling client for browsers and Node.js 20+ (wire contract v1, see
// docs/protocol.md in the Starling repository).
//
// One `StarlingClient` owns one WebSocket at a time. It runs the connection
// state machine (connecting -> connected -> disconnected -> ... -> closed),
// asks the token provider for a token before every connection attempt,
// decides from the close code whether and when to reconnect (POLICY below),
// re-joins every room after a reconnect, and keeps a bounded queue of
// publishes made while a room is not joined. It has no runtime dependency:
// browsers use their WebSocket; Node 20 uses the `ws` package (or any
// constructor passed as the `WebSocket` option).

/** Default options; every one can be overridden in the constructor. */
export const DEFAULTS = Object.freeze({
  minReconnectDelayMs: 250,
  maxReconnectDelayMs: 10000,
  rateLimitedDelayMs: 5000,
  requestTimeoutMs: 10000,
  connectTimeoutMs: 5000,
  heartbeatGraceMs: 10000,
  queueLimit: 100,
  retryPublish: true,
  maxAuthFailures: 3,
});

/**
 * What the client does when a connection ends with a close code (or with an
 * HTTP status at the upgrade, where the platform exposes it: Node only).
 * action: "reconnect" (backoff with full jitter), "refresh" (new token,
 * reconnect at once), "slow" (reconnect after at least rateLimitedDelayMs),
 * "stop" (state `closed`, no reconnect). rotate: try the next URL.
 */
export const POLICY = Object.freeze({
  1000: { action: "stop", rotate: false, why: "the server disconnected this user" },
  1001: { action: "reconnect", rotate: true, why: "going away" },
  1002: { action: "stop", rotate: false, why: "protocol error: reconnecting would repeat it" },
  1003: { action: "stop", rotate: false, why: "unsupported data: reconnecting would repeat it" },
  1005: { action: "reconnect", rotate: true, why: "closed without a code" },
  1006: { action: "reconnect", rotate: true, why: "connection lost or refused" },
  1007: { action: "stop", rotate: false, why: "invalid payload: reconnecting would repeat it" },
  1008: { action: "refresh", rotate: false, why: "token expired" },
  1009: { action: "reconnect", rotate: false, why: "message too large" },
  1011: { action: "reconnect", rotate: true, why: "server error" },
  1012: { action: "reconnect", rotate: true, why: "node restarting or evicted" },
  1013: { action: "reconnect", rotate: true, why: "node overloaded" },
  4000: { action: "reconnect", rotate: true, why: "heartbeat watchdog: no frame from the server in time" },
  4001: { action: "reconnect", rotate: false, why: "server heartbeat timeout" },
  4008: { action: "reconnect", rotate: false, why: "slow consumer" },
  4029: { action: "slow", rotate: false, why: "rate limited" },
  http401: { action: "refresh", rotate: false, why: "token refused at the upgrade" },
  http503: { action: "reconnect", rotate: true, why: "node draining or full" },
});
const UNKNOWN_CODE = { action: "reconnect", rotate: true, why: "unknown close code" };

/** Error codes of the wire contract that are retried for joins. */
const RETRYABLE = new Set(["rate_limited", "unavailable"]);

/** Every rejected promise of this client carries a StarlingError. */
export class StarlingError extends Error {
  constructor(code, message, retryAfterMs) {
    super(message || code);
    this.name = "StarlingError";
    /** A wire-contract code (`forbidden`, `unavailable`, ...) or a client
     * code: `timeout`, `disconnected`, `queue_overflow`, `closed`, `left`. */
    this.code = code;
    if (retryAfterMs !== undefined) this.retryAfterMs = retryAfterMs;
  }
}

/** A tiny event emitter: `on` returns a function that removes the listener. */
class Emitter {
  #listeners = new Map();

  on(event, listener) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  once(event, listener) {
    const off = this.on(event, (...args) => {
      off();
      listener(...args);
    });
    return off;
  }

  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }

  emit(event, ...args) {
    for (const listener of [...(this.#listeners.get(event) || [])]) {
      try {
        listener(...args);
      } catch (error) {
        // A faulty listener must not break the client's own bookkeeping.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}

/** Exponential backoff with full jitter: uniform in [0, min(max, min * 2^attempt)]. */
export function backoffDelay(attempt, minMs, maxMs, random = Math.random) {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(random() * ceiling);
}

/** The decision for a close code (or "http401"/"http503"). */
export function policyFor(code) {
  return POLICY[code] || UNKNOWN_CODE;
}

async function defaultWebSocket() {
  if (typeof globalThis.WebSocket === "function") return globalThis.WebSocket;
  const module = await import("ws");
  return module.WebSocket || module.default;
}

/** A room joined through a client; created by `client.join`. */
export class Room extends Emitter {
  #client;
  #members = new Map();

  constructor(client, name, meta) {
    super();
    this.#client = client;
    /** The room name, `namespace:rest`. */
    this.name = name;
    /** The `meta` sent with every (re)join. */
    this.meta = meta;
    /** `joining`, `joined`, `left` or `failed`. */
    this.state = "joining";
    /** The last known position (join reply or last message), null before the first join. */
    this.epoch = null;
    this.offset = null;
    this.joinedOnce = false;
    this.ready = new Promise((resolve, reject) => {
      this.settleReady = { resolve, reject };
    });
    // The caller may never await `ready`; its rejection is also an event.
    this.ready.catch(() => {});
  }

  /** The members as last known (join reply, then `joined`/`left` events), ordered by `conn`. */
  get members() {
    return [...this.#members.values()].sort((a, b) => (a.conn < b.conn ? -1 : a.conn > b.conn ? 1 : 0));
  }

  /** Publishes `data` to the room; queued while the room is not joined. */
  publish(data) {
    return this.#client.publishTo(this, data);
  }

  /** Reads the room's members from the server (a `presence` request). */
  async presence() {
    const result = await this.#client.request({ type: "presence", room: this.name });
    return result.members;
  }

  /** Leaves the room: no more events, no re-join, queued publishes rejected. */
  leave() {
    return this.#client.leaveRoom(this);
  }

  // --- called by the client -------------------------------------------------

  applyJoin(result) {
    const previous = this.joinedOnce ? { epoch: this.epoch, offset: this.offset } : null;
    this.epoch = result.epoch;
    this.offset = result.offset;
    this.state = "joined";
    if (Array.isArray(result.members)) {
      this.#members = new Map(result.members.map((m) => [m.conn, m]));
      this.emit("presence", this.members);
    }
    if (previous === null) {
      this.joinedOnce = true;
      this.settleReady.resolve(result);
      this.emit("subscribed", { epoch: result.epoch, offset: result.offset });
      return;
    }
    // Same epoch and same offset: the sequence did not move while we were
    // away, so nothing was missed. Otherwise (messages sequenced meanwhile,
    // or a new epoch: the room restarted or changed owner) some may have been.
    const missed = !(previous.epoch === result.epoch && previous.offset === result.offset);
    this.emit("resubscribed", {
      missed,
      epoch: result.epoch,
      offset: result.offset,
      previousEpoch: previous.epoch,
      previousOffset: previous.offset,
    });
  }

  applyFrame(frame) {
    switch (frame.type) {
      case "message":
        this.epoch = frame.epoch;
        this.offset = frame.offset;
        this.emit("message", { data: frame.data, from: frame.from, epoch: frame.epoch, offset: frame.offset });
        break;
      case "joined":
        this.#members.set(frame.member.conn, frame.member);
        this.emit("joined", frame.member);
        this.emit("presence", this.members);
        break;
      case "left":
        this.#members.delete(frame.member.conn);
        this.emit("left", frame.member);
        this.emit("presence", this.members);
        break;
    }
  }

  markDisconnected() {
    if (this.state === "joined") this.state = "joining";
    this.#members.clear();
  }

  fail(error) {
    this.state = "failed";
    this.settleReady.reject(error);
    this.emit("error", error);
  }
}

/** A Starling connection with automatic reconnection. */
export class StarlingClient extends Emitter {
  #ws = null;
  #wsClass = null;
  #urlIndex = 0;
  #attempt = 0;
  #authFailures = 0;
  #nextId = 1;
  #pending = new Map();
  #rooms = new Map();
  #queue = [];
  #timers = { reconnect: null, watchdog: null, connect: null };
  #generation = 0;
  #lastRetryAfterMs = 0;

  /**
   * @param {object} options see index.d.ts (`ClientOptions`).
   */
  constructor(options) {
    super();
    const urls = options.urls || (options.url ? [options.url] : []);
    if (urls.length === 0) throw new TypeError("StarlingClient needs `url` or `urls`");
    if (options.token === undefined) throw new TypeError("StarlingClient needs `token` (a string or a function)");
    this.urls = [...urls];
    this.options = { ...DEFAULTS, ...options };
    this.#wsClass = options.WebSocket || null;
    /** `connecting`, `connected`, `disconnected` or `closed`. */
    this.state = "closed";
    /** The `welcome` frame of the current connection (conn, node, user, heartbeat_ms). */
    this.session = null;
    if (options.autoConnect !== false) this.connect();
  }

  /** The URL of the current (or next) connection attempt. */
  get url() {
    return this.urls[this.#urlIndex];
  }

  /** Starts connecting (after `close()`, or with `autoConnect: false`). */
  connect() {
    if (this.state === "connecting" || this.state === "connected") return;
    this.#attempt = 0;
    this.#authFailures = 0;
    this.#open();
  }

  /** Closes the connection for good: state `closed`, every pending promise rejected. */
  close() {
    this.#teardown(1000, "client closed");
    for (const room of this.#rooms.values()) room.markDisconnected();
    this.#rejectQueue(() => new StarlingError("closed", "the client was closed"));
    this.#setState("closed", { code: 1000, reason: "client closed" });
  }

  /** Joins `room` (and re-joins it after every reconnect); returns the Room at once. */
  join(name, meta) {
    const existing = this.#rooms.get(name);
    if (existing) return existing;
    const room = new Room(this, name, meta);
    this.#rooms.set(name, room);
    if (this.state === "connected") this.#sendJoin(room);
    return room;
  }

  /** Reads the members of any room the token allows. */
  async presence(room) {
    const result = await this.request({ type: "presence", room });
    return result.members;
  }

  /** Sends a request and resolves with its `result` (rejects with a StarlingError). */
  request(frame, timeoutMs = this.options.requestTimeoutMs) {
    if (this.state !== "connected") {
      return Promise.reject(new StarlingError("disconnected", "not connected"));
    }
    return new Promise((resolve, reject) => {
      const id = this.#nextId++;
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new StarlingError("timeout", `no reply to ${frame.type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.#send({ ...frame, id });
    });
  }

  // --- used by Room ----------------------------------------------------------

  publishTo(room, data) {
    if (room.state === "left" || room.state === "failed") {
      return Promise.reject(new StarlingError("left", `not in room ${room.name}`));
    }
    return new Promise((resolve, reject) => {
      const item = { room, data, timer: null, done: false };
      item.resolve = (value) => {
        item.done = true;
        resolve(value);
      };
      item.reject = (error) => {
        item.done = true;
        reject(error);
      };
      // One deadline for the publish's whole life, queued and in flight.
      item.timer = setTimeout(() => {
        this.#dequeue(item);
        item.reject(new StarlingError("timeout", `publish not answered within ${this.options.requestTimeoutMs} ms`));
      }, this.options.requestTimeoutMs);
      if (room.state === "joined" && this.state === "connected" && !this.#queue.some((q) => q.room === room)) {
        this.#sendPublish(item);
        return;
      }
      if (this.#queue.length >= this.options.queueLimit) {
        // Oldest first: the oldest queued publish makes room for the newest.
        const dropped = this.#queue.shift();
        clearTimeout(dropped.timer);
        dropped.reject(new StarlingError("queue_overflow", "dropped from the full offline queue"));
      }
      this.#queue.push(item);
    });
  }

  async leaveRoom(room) {
    if (room.state === "left") return;
    const wasJoined = room.state === "joined";
    room.state = "left";
    this.#rooms.delete(room.name);
    this.#rejectQueue(() => new StarlingError("left", `left room ${room.name}`), room);
    room.settleReady.reject(new StarlingError("left", `left room ${room.name}`));
    if (wasJoined && this.state === "connected") {
      try {
        await this.request({ type: "leave", room: room.name });
      } catch (error) {
        // `not_joined`: the connection is no longer in the room, as wanted.
        if (error.code !== "not_joined" && error.code !== "disconnected") throw error;
      }
    }
  }

  // --- connection ----------------------------------------------------------------

  #setState(state, detail = {}) {
    const previous = this.state;
    if (previous === state && state !== "disconnected") return;
    this.state = state;
    this.emit("state", { state, previous, ...detail });
    this.emit(state, detail);
  }

  async #open() {
    const generation = ++this.#generation;
    this.#setState("connecting", { url: this.url });
    let token;
    try {
      if (!this.#wsClass) this.#wsClass = await defaultWebSocket();
      token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    } catch (error) {
      if (generation !== this.#generation) return;
      this.#lost({ code: 1006, reason: `token provider failed: ${error.message || error}`, opened: false });
      return;
    }
    if (generation !== this.#generation) return;
    const url = this.url;
    const separator = url.includes("?") ? "&" : "?";
    const ws = new this.#wsClass(`${url}${separator}token=${encodeURIComponent(token)}`);
    this.#ws = ws;
    let httpStatus = null;
    let opened = false;
    this.#timers.connect = setTimeout(() => {
      this.#lost({ code: 4000, reason: "no welcome within connectTimeoutMs", opened: false });
    }, this.options.connectTimeoutMs);
    ws.onopen = () => {
      opened = true;
    };
    ws.onerror = (event) => {
      // Node's `ws` names the HTTP status of a refused upgrade; browsers hide it.
      const match = /Unexpected server response: (\d+)/.exec(event?.message || event?.error?.message || "");
      if (match) httpStatus = Number(match[1]);
    };
    ws.onclose = (event) => {
      if (this.#ws !== ws) return;
      const code = httpStatus ? `http${httpStatus}` : event.code;
      this.#lost({ code, reason: event.reason || "", opened });
    };
    ws.onmessage = (event) => {
      if (this.#ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(typeof event.data === "string" ? event.data : String(event.data));
      } catch {
        return;
      }
      this.#onFrame(frame);
    };
  }

  #onFrame(frame) {
    switch (frame.type) {
      case "welcome":
        clearTimeout(this.#timers.connect);
        this.session = frame;
        this.#attempt = 0;
        this.#authFailures = 0;
        this.#setState("connected", { url: this.url, ...frame });
        for (const room of this.#rooms.values()) this.#sendJoin(room);
        break;
      case "ping":
        this.#send({ type: "pong" });
        break;
      case "reply": {
        const waiter = this.#pending.get(frame.id);
        if (!waiter) return;
        this.#pending.delete(frame.id);
        clearTimeout(waiter.timer);
        if (frame.ok) waiter.resolve(frame.result);
        else {
          const error = frame.error || {};
          if (error.code === "rate_limited") this.#lastRetryAfterMs = error.retry_after_ms || 0;
          waiter.reject(new StarlingError(error.code || "internal", error.message, error.retry_after_ms));
        }
        break;
      }
      case "message":
      case "joined":
      case "left": {
        const room = this.#rooms.get(frame.room);
        if (room && room.state === "joined") room.applyFrame(frame);
        break;
      }
      default:
        // v1 changes additively: unknown frames are ignored.
        break;
    }
    // Any frame proves the link is alive (the server pings every heartbeat_ms).
    if (this.#ws) this.#armWatchdog();
  }

  #armWatchdog() {
    clearTimeout(this.#timers.watchdog);
    const heartbeatMs = this.session?.heartbeat_ms;
    if (!heartbeatMs) return;
    this.#timers.watchdog = setTimeout(() => {
      this.#lost({ code: 4000, reason: "heartbeat watchdog: no frame from the server", opened: true });
    }, heartbeatMs + this.options.heartbeatGraceMs);
  }

  async #sendJoin(room) {
    const generation = this.#generation;
    const frame = { type: "join", room: room.name };
    if (room.meta !== undefined) frame.meta = room.meta;
    for (;;) {
      try {
        const result = await this.request(frame);
        if (generation !== this.#generation || room.state === "left") return;
        room.applyJoin(result);
        this.#flushQueue(room);
        return;
      } catch (error) {
        if (generation !== this.#generation || room.state === "left") return;
        const retry = RETRYABLE.has(error.code) || (error.code === "timeout" && room.joinedOnce);
        if (!retry) {
          this.#rooms.delete(room.name);
          this.#rejectQueue(() => new StarlingError(error.code, `join failed: ${error.message}`), room);
          room.fail(error);
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, error.retryAfterMs || this.options.minReconnectDelayMs));
        if (generation !== this.#generation || room.state === "left") return;
      }
    }
  }

  #sendPublish(item) {
    const id = this.#nextId++;
    this.#pending.set(id, {
      resolve: (result) => {
        clearTimeout(item.timer);
        item.resolve(result);
      },
      reject: (error) => {
        if (this.options.retryPublish && RETRYABLE.has(error.code)) {
          // Not sequenced (rate limited), or the room's owner is moving:
          // try again within the publish's deadline (see README: a retry
          // after an ambiguous `unavailable` can deliver twice).
          setTimeout(() => this.#retryPublish(item), error.retryAfterMs || this.options.minReconnectDelayMs);
          return;
        }
        clearTimeout(item.timer);
        item.reject(error);
      },
      timer: null,
    });
    item.pendingId = id;
    this.#send({ type: "publish", id, room: item.room.name, data: item.data });
  }

  #retryPublish(item) {
    if (item.done) return;
    delete item.pendingId;
    if (item.room.state === "joined" && this.state === "connected") this.#sendPublish(item);
    else if (item.room.state === "joining") this.#queue.unshift(item);
    else {
      clearTimeout(item.timer);
      item.reject(new StarlingError("left", `not in room ${item.room.name}`));
    }
  }

  #flushQueue(room) {
    const mine = this.#queue.filter((item) => item.room === room);
    this.#queue = this.#queue.filter((item) => item.room !== room);
    for (const item of mine) this.#sendPublish(item);
  }

  #dequeue(item) {
    this.#queue = this.#queue.filter((q) => q !== item);
    if (item.pendingId !== undefined) this.#pending.delete(item.pendingId);
  }

  #rejectQueue(makeError, room = null) {
    const keep = [];
    for (const item of this.#queue) {
      if (room && item.room !== room) keep.push(item);
      else {
        clearTimeout(item.timer);
        item.reject(makeError());
      }
    }
    this.#queue = keep;
  }

  #send(frame) {
    if (this.#ws && this.#ws.readyState === 1) this.#ws.send(JSON.stringify(frame));
  }

  /** Drops the current socket and fails everything in flight on it. */
  #teardown(code, reason) {
    this.#generation++;
    for (const timer of Object.values(this.#timers)) clearTimeout(timer);
    const ws = this.#ws;
    this.#ws = null;
    this.session = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {};
      try {
        if (typeof ws.terminate === "function" && code !== 1000) ws.terminate();
        else ws.close(code, reason);
      } catch {
        // Already closed.
      }
    }
    for (const waiter of this.#pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new StarlingError("disconnected", "the connection was lost before the reply"));
    }
    this.#pending.clear();
  }

  #lost({ code, reason, opened }) {
    if (this.state === "closed") return;
    this.#teardown(4000, reason);
    for (const room of this.#rooms.values()) room.markDisconnected();
    const policy = policyFor(code);
    if (policy.action === "refresh") this.#authFailures++;
    if (policy.action === "stop" || this.#authFailures > this.options.maxAuthFailures) {
      this.#rejectQueue(() => new StarlingError("closed", `connection closed: ${code} ${reason}`));
      this.#setState("closed", { code, reason: reason || policy.why });
      return;
    }
    if (policy.rotate || !opened) this.#urlIndex = (this.#urlIndex + 1) % this.urls.length;
    const { minReconnectDelayMs: min, maxReconnectDelayMs: max } = this.options;
    let delayMs;
    if (policy.action === "refresh" && this.#authFailures <= 1) delayMs = 0;
    else if (policy.action === "slow") {
      delayMs = Math.max(this.options.rateLimitedDelayMs, this.#lastRetryAfterMs) + backoffDelay(0, min, max);
    } else delayMs = backoffDelay(this.#attempt, min, max);
    this.#attempt++;
    this.#setState("disconnected", { code, reason: reason || policy.why, delayMs, nextUrl: this.url });
    this.#timers.reconnect = setTimeout(() => this.#open(), delayMs);
  }
}
