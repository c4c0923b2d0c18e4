// Starling client for browsers and Node.js 20+ (wire contract v1, see
// docs/protocol.md in the Starling repository).
//
// One `StarlingClient` owns one WebSocket at a time. It runs the connection
// state machine (connecting -> connected -> disconnected -> ... -> closed),
// asks the token provider for a token before every connection attempt,
// decides from the close code whether and when to reconnect (POLICY below),
// re-joins every room after a reconnect, and keeps a bounded queue of
// publishes made while a room is not joined. It has no runtime dependency:
// browsers use their WebSocket; Node uses the `ws` package when it is
// installed (it exposes the HTTP status and the server's reason of a
// refused upgrade; Node 22+'s global WebSocket does not), else the global
// one, or any constructor passed as the `WebSocket` option. Bundlers map
// `ws` away for browsers (package.json `browser` field).

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
  maxJoinsInFlight: 10,
});

/** Messages held per room while its join reply is awaited (see Room.holdMessage). */
const EARLY_MESSAGE_LIMIT = 1024;
/** Ceiling of the first retry of a join answered `unavailable` (a failover). */
const UNAVAILABLE_FIRST_RETRY_MS = 200;
/** How long the body of a refused upgrade (the server's reason) is read before the client gives up on it. */
const REFUSAL_BODY_TIMEOUT_MS = 1000;
/** The most characters of a refused upgrade's body kept as its reason. */
const REFUSAL_REASON_LIMIT = 200;
/** The reason of a socket that closed (1006) before it opened, where the WebSocket says nothing more (browsers). */
const NOT_OPENED_REASON = "refused or unreachable before opening (HTTP status and reason hidden)";

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

/** Error codes of the wire contract that are retried (joins, leaves, publishes with retryPublish). */
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

const IN_NODE = typeof process === "object" && process !== null && typeof process.versions?.node === "string";

async function defaultWebSocket() {
  if (IN_NODE) {
    // Prefer `ws`: Node 22+'s global (undici) WebSocket reports an upgrade
    // refused with HTTP 401 or 503 as a bare 1006, hiding the status the
    // reconnect policy needs (maxAuthFailures, next URL on 503).
    try {
      const module = await import("ws");
      const WebSocketClass = module.WebSocket || module.default;
      if (typeof WebSocketClass === "function") return WebSocketClass;
    } catch {
      // Not installed: fall back to the global one.
    }
  }
  if (typeof globalThis.WebSocket === "function") return globalThis.WebSocket;
  throw new Error("no WebSocket: install the `ws` package or pass the `WebSocket` option");
}

/**
 * Why a server refused an upgrade, from the HTTP response the `ws` package
 * hands to an `unexpected-response` listener: Starling answers 401, 403,
 * 404 and 503 with a short plain-text body (protocol.md section 1), e.g.
 * `invalid token: bad signature`. A body that is not plain text (a proxy's
 * HTML error page) is no reason. Resolves with one line of at most
 * REFUSAL_REASON_LIMIT characters, "" when there is none, within
 * REFUSAL_BODY_TIMEOUT_MS; never rejects.
 */
function readRefusalReason(response) {
  return new Promise((resolve) => {
    const type = String(response.headers?.["content-type"] || "text/plain").toLowerCase();
    if (!type.startsWith("text/plain")) {
      resolve("");
      return;
    }
    let text = "";
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(text.replace(/[\s\u0000-\u001f\u007f]+/g, " ").trim().slice(0, REFUSAL_REASON_LIMIT));
    };
    const timer = setTimeout(finish, REFUSAL_BODY_TIMEOUT_MS);
    response.setEncoding("utf8");
    response.on("data", (chunk) => {
      text += chunk;
      if (text.length >= REFUSAL_REASON_LIMIT) finish();
    });
    response.on("end", finish);
    response.on("close", finish);
    response.on("error", finish);
  });
}

/** A room joined through a client; created by `client.join`. */
export class Room extends Emitter {
  #client;
  #members = new Map();
  /** `message` frames that arrived while this room's join was awaited. */
  #early = [];
  #earlyOverflowed = false;

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

  /**
   * A `message` that came before this room's join reply. protocol.md §10:
   * the server queues a message for a member from the moment its join takes
   * effect; the reply then carries the position reached, so every message
   * before the reply has `offset <= reply.offset` and was sequenced after
   * the join took effect. It is this member's message: held, then emitted
   * after the reply (applyJoin).
   */
  holdMessage(frame) {
    if (this.#early.length >= EARLY_MESSAGE_LIMIT) {
      this.#early.shift();
      this.#earlyOverflowed = true;
    }
    this.#early.push(frame);
  }

  applyJoin(result) {
    const previous = this.joinedOnce ? { epoch: this.epoch, offset: this.offset } : null;
    const early = this.#early;
    const overflowed = this.#earlyOverflowed;
    this.#early = [];
    this.#earlyOverflowed = false;
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
    } else {
      // `recovered`: the server replayed every message after the last one
      // seen, before its reply (they are among the early messages). Without
      // it, nothing was missed only when what this connection receives
      // continues exactly from the last position seen: the first early
      // message is the next offset of the same epoch, or (no early message)
      // the room is still at that very position. Otherwise messages were
      // sequenced meanwhile, or the epoch changed (the room restarted), and
      // some may have been missed.
      const recovered = result.recovered === true;
      const sameEpoch = result.epoch === previous.epoch && early.every((m) => m.epoch === previous.epoch);
      const continued =
        sameEpoch &&
        !overflowed &&
        (early.length > 0 ? early[0].offset === previous.offset + 1 : result.offset === previous.offset);
      this.emit("resubscribed", {
        missed: !recovered && !continued,
        recovered,
        epoch: result.epoch,
        offset: result.offset,
        previousEpoch: previous.epoch,
        previousOffset: previous.offset,
      });
    }
    // Early messages precede the reply in the stream; the position stays the reply's.
    for (const frame of early) {
      if (this.state !== "joined") break;
      this.emit("message", { data: frame.data, from: frame.from, epoch: frame.epoch, offset: frame.offset });
    }
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
    this.#early = [];
    this.#earlyOverflowed = false;
    this.joinInFlight = false;
    this.unavailableRetries = 0;
  }

  fail(error) {
    this.state = "failed";
    this.#early = [];
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
  /** Publishes waiting for their room's join reply, oldest call first. */
  #queue = [];
  /** Every publish not yet settled (queued, in flight or waiting to retry). */
  #publishes = new Set();
  #publishSeq = 0;
  #timers = { reconnect: null, watchdog: null, connect: null, joinResume: null };
  /** Waits (join retries) that end early when the connection is torn down. */
  #delays = new Set();
  #generation = 0;
  #lastRetryAfterMs = 0;
  /** Set by close() or a close code that stops the client; cleared by connect(). */
  #stopped = false;
  /** Join scheduler of the current connection. */
  #joinQueue = [];
  #joinsInFlight = 0;
  #joinResumeAt = 0;

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

  /** Starts connecting (after `close()`, or with `autoConnect: false`); at once when a reconnect is scheduled. */
  connect() {
    if (this.state === "connecting" || this.state === "connected") return;
    // A reconnect may be scheduled (state `disconnected`): this attempt replaces it.
    this.#clearTimer("reconnect");
    this.#stopped = false;
    this.#attempt = 0;
    this.#authFailures = 0;
    this.#open();
  }

  /** Closes the connection for good: state `closed`, every pending promise rejected with `closed`. */
  close() {
    this.#stop(1000, "client closed", true);
  }

  /** Joins `room` (and re-joins it after every reconnect); returns the Room at once. */
  join(name, meta) {
    const existing = this.#rooms.get(name);
    if (existing) return existing;
    const room = new Room(this, name, meta);
    this.#rooms.set(name, room);
    if (this.state === "connected") this.#scheduleJoin(room);
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
      return Promise.reject(
        this.#stopped
          ? new StarlingError("closed", "the client is closed")
          : new StarlingError("disconnected", "not connected"),
      );
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
    if (this.#stopped) return Promise.reject(new StarlingError("closed", "the client is closed"));
    return new Promise((resolve, reject) => {
      const item = { room, data, seq: this.#publishSeq++, timer: null, retryTimer: null, done: false };
      const settle = () => {
        item.done = true;
        clearTimeout(item.timer);
        clearTimeout(item.retryTimer);
        this.#publishes.delete(item);
      };
      item.resolve = (value) => {
        if (item.done) return;
        settle();
        resolve(value);
      };
      item.reject = (error) => {
        if (item.done) return;
        settle();
        reject(error);
      };
      this.#publishes.add(item);
      // One deadline for the publish's whole life, queued and in flight.
      item.timer = setTimeout(() => {
        this.#dequeue(item);
        item.reject(new StarlingError("timeout", `publish not answered within ${this.options.requestTimeoutMs} ms`));
      }, this.options.requestTimeoutMs);
      if (room.state === "joined" && this.state === "connected" && !this.#queue.some((q) => q.room === room)) {
        this.#sendPublish(item);
        return;
      }
      this.#enqueue(item);
    });
  }

  async leaveRoom(room) {
    if (room.state === "left") return;
    // A join in flight on this connection will take effect: the server
    // handles one connection's requests in order, so a `leave` sent now is
    // handled after it and removes the membership.
    const onServer = room.state === "joined" || room.joinInFlight;
    room.markDisconnected();
    room.state = "left";
    if (this.#rooms.get(room.name) === room) this.#rooms.delete(room.name);
    this.#rejectQueue(() => new StarlingError("left", `left room ${room.name}`), room);
    room.settleReady.reject(new StarlingError("left", `left room ${room.name}`));
    if (!onServer || this.state !== "connected") return;
    const generation = this.#generation;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.request({ type: "leave", room: room.name });
        return;
      } catch (error) {
        // `not_joined`: the connection is not in the room, as wanted. A lost
        // connection leaves every room.
        if (["not_joined", "disconnected", "closed"].includes(error.code)) return;
        if (!RETRYABLE.has(error.code) || attempt >= 5) throw error;
        await this.#delay(error.retryAfterMs || this.options.minReconnectDelayMs);
        if (generation !== this.#generation) return;
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

  #clearTimer(name) {
    clearTimeout(this.#timers[name]);
    this.#timers[name] = null;
  }

  async #open() {
    // Never two sockets: whatever is left of a previous one goes first.
    if (this.#ws) this.#teardown(4000, "replaced by a new connection");
    this.#clearTimer("reconnect");
    const generation = ++this.#generation;
    this.#setState("connecting", { url: this.url });
    let token;
    try {
      if (!this.#wsClass) this.#wsClass = await defaultWebSocket();
      token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    } catch (error) {
      if (generation !== this.#generation) return;
      this.#lost({ code: 1006, reason: `could not connect: ${error.message || error}`, opened: false });
      return;
    }
    if (generation !== this.#generation || this.state !== "connecting") return;
    const url = this.url;
    const separator = url.includes("?") ? "&" : "?";
    const ws = new this.#wsClass(`${url}${separator}token=${encodeURIComponent(token)}`);
    this.#ws = ws;
    let httpStatus = null;
    let httpReason = "";
    let errorMessage = "";
    let opened = false;
    // Every timer and handler acts only while `ws` is still the current socket.
    this.#timers.connect = setTimeout(() => {
      if (this.#ws === ws) this.#lost({ code: 4000, reason: "no welcome within connectTimeoutMs", opened: false });
    }, this.options.connectTimeoutMs);
    if (typeof ws.once === "function") {
      // Node's `ws` hands the response of a refused upgrade to this listener
      // and leaves the aborting to it: its status and body say why (browsers
      // hide both, and so does Node's global WebSocket).
      ws.once("unexpected-response", (_request, response) => {
        httpStatus = response.statusCode;
        readRefusalReason(response).then((reason) => {
          httpReason = reason;
          // Closes with 1006; onclose reports the status and the reason.
          if (typeof ws.terminate === "function") ws.terminate();
          else ws.close();
        });
      });
    }
    ws.onopen = () => {
      opened = true;
    };
    ws.onerror = (event) => {
      errorMessage = event?.message || event?.error?.message || "";
      // Another library may name the status only in its error message.
      const match = /Unexpected server response: (\d+)/.exec(errorMessage);
      if (match && !httpStatus) httpStatus = Number(match[1]);
    };
    ws.onclose = (event) => {
      if (this.#ws !== ws) return;
      if (httpStatus) {
        const code = `http${httpStatus}`;
        // Without a body, a status with a POLICY entry has its `why`.
        const reason = httpReason || (code in POLICY ? "" : `upgrade refused with HTTP ${httpStatus}`);
        this.#lost({ code, reason, opened });
        return;
      }
      let reason = event.reason || "";
      if (!reason && !opened && event.code === 1006) {
        reason = errorMessage ? `could not connect: ${errorMessage}` : NOT_OPENED_REASON;
      }
      this.#lost({ code: event.code, reason, opened });
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
        this.#clearTimer("connect");
        this.session = frame;
        this.#attempt = 0;
        this.#authFailures = 0;
        this.#setState("connected", { url: this.url, ...frame });
        for (const room of this.#rooms.values()) this.#scheduleJoin(room);
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
      case "message": {
        const room = this.#rooms.get(frame.room);
        if (room?.state === "joined") room.applyFrame(frame);
        // Before the join reply: the member's message all the same (protocol.md §10).
        else if (room?.state === "joining") room.holdMessage(frame);
        break;
      }
      case "joined":
      case "left": {
        // Before the join reply these are already reflected in its `members`.
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
    this.#clearTimer("watchdog");
    const heartbeatMs = this.session?.heartbeat_ms;
    if (!heartbeatMs) return;
    const ws = this.#ws;
    this.#timers.watchdog = setTimeout(() => {
      if (this.#ws === ws) this.#lost({ code: 4000, reason: "heartbeat watchdog: no frame from the server", opened: true });
    }, heartbeatMs + this.options.heartbeatGraceMs);
  }

  /** A wait that ends early (resolves) when the connection is torn down; callers re-check the generation. */
  #delay(ms) {
    return new Promise((resolve) => {
      const entry = { resolve };
      entry.timer = setTimeout(() => {
        this.#delays.delete(entry);
        resolve();
      }, ms);
      this.#delays.add(entry);
    });
  }

  // --- joins: at most maxJoinsInFlight at once, all paused on rate_limited ----

  #scheduleJoin(room) {
    if (this.state !== "connected" || room.state === "left" || room.state === "failed") return;
    // Already queued, in flight, waiting to retry or joined on this connection.
    if (room.joinGeneration === this.#generation) return;
    room.joinGeneration = this.#generation;
    this.#joinQueue.push(room);
    this.#pumpJoins();
  }

  #pumpJoins() {
    if (this.state !== "connected" || this.#timers.joinResume) return;
    while (this.#joinsInFlight < this.options.maxJoinsInFlight && this.#joinQueue.length > 0) {
      const room = this.#joinQueue.shift();
      if (room.state !== "joining" || this.#rooms.get(room.name) !== room) continue;
      this.#joinOnce(room);
    }
  }

  /** Every join waits until `retryAfterMs` (plus jitter) from now; the server's bucket refills meanwhile. */
  #pauseJoins(retryAfterMs) {
    const base = Math.max(1, retryAfterMs || this.options.minReconnectDelayMs);
    const until = Date.now() + base + Math.round(Math.random() * Math.max(base, 50));
    if (until <= this.#joinResumeAt && this.#timers.joinResume) return;
    this.#joinResumeAt = until;
    this.#clearTimer("joinResume");
    this.#timers.joinResume = setTimeout(() => {
      this.#timers.joinResume = null;
      this.#pumpJoins();
    }, until - Date.now());
  }

  /**
   * The wait before re-sending a join answered `unavailable` (no Raft leader
   * or quorum yet: a failover, usually over in 0.5 to 2 s). The first wait is
   * at most 200 ms, not the 500 ms retry_after_ms: the server itself takes
   * about 250 ms to answer `unavailable`, so a join is on the server most of
   * the time and one landing right after the new leader is elected goes
   * through. Each repeat grows the ceiling by a quarter, up to
   * retry_after_ms; the wait is jittered within [ceiling/2, ceiling].
   */
  #unavailableDelay(room, retryAfterMs) {
    const retries = room.unavailableRetries || 0;
    room.unavailableRetries = retries + 1;
    const first = Math.min(retryAfterMs || UNAVAILABLE_FIRST_RETRY_MS, UNAVAILABLE_FIRST_RETRY_MS);
    const cap = Math.max(retryAfterMs || 0, first);
    const ceiling = Math.min(cap, first * 1.25 ** Math.min(retries, 20));
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  async #joinOnce(room) {
    const generation = this.#generation;
    const frame = { type: "join", room: room.name };
    if (room.meta !== undefined) frame.meta = room.meta;
    // A re-join asks for every message after the last one seen (wire v1.1):
    // the server replays them before its reply when its history holds them.
    if (room.joinedOnce && room.epoch !== null) frame.since = { epoch: room.epoch, offset: room.offset };
    this.#joinsInFlight++;
    room.joinInFlight = true;
    let result = null;
    let error = null;
    try {
      result = await this.request(frame);
    } catch (caught) {
      error = caught;
    }
    // A teardown reset the scheduler; the next connection joins afresh.
    if (generation !== this.#generation) return;
    this.#joinsInFlight--;
    room.joinInFlight = false;
    if (room.state !== "joining" || this.#rooms.get(room.name) !== room) {
      // Left meanwhile: leaveRoom sent the `leave` behind this join.
      this.#pumpJoins();
      return;
    }
    if (!error) {
      room.unavailableRetries = 0;
      room.applyJoin(result);
      this.#flushQueue(room);
    } else if (error.code === "rate_limited") {
      this.#joinQueue.unshift(room);
      this.#pauseJoins(error.retryAfterMs);
    } else if (error.code === "unavailable" || (error.code === "timeout" && room.joinedOnce)) {
      // Joins are idempotent: retry (a timed-out re-join too; a first join
      // that times out rejects `ready` instead).
      const wait = error.code === "unavailable" ? this.#unavailableDelay(room, error.retryAfterMs) : this.options.minReconnectDelayMs;
      this.#retryJoinAfter(room, wait, generation);
    } else {
      this.#rooms.delete(room.name);
      this.#rejectQueue(() => new StarlingError(error.code, `join failed: ${error.message}`), room);
      room.fail(error);
    }
    this.#pumpJoins();
  }

  async #retryJoinAfter(room, ms, generation) {
    await this.#delay(ms);
    if (generation !== this.#generation || room.state !== "joining" || this.#rooms.get(room.name) !== room) return;
    this.#joinQueue.push(room);
    this.#pumpJoins();
  }

  // --- publishes ---------------------------------------------------------------

  #sendPublish(item) {
    const id = this.#nextId++;
    this.#pending.set(id, {
      resolve: (result) => item.resolve(result),
      reject: (error) => {
        if (this.options.retryPublish && RETRYABLE.has(error.code) && !this.#stopped) {
          // Not sequenced (rate limited), or the room's owner is moving:
          // try again within the publish's deadline (see README: a retry
          // after an ambiguous `unavailable` can deliver twice). G9: the
          // server refuses the room's later publishes too, and they all go
          // back into the queue in call order, so the retries keep it.
          delete item.pendingId;
          this.#enqueue(item);
          this.#retryRoomAfter(item.room, error.retryAfterMs || this.options.minReconnectDelayMs);
          return;
        }
        item.reject(error);
      },
      timer: null,
    });
    item.pendingId = id;
    // `idem` names the publish on this connection: its retry carries the
    // same key, which lets the server hold later publishes back until it.
    this.#send({ type: "publish", id, room: item.room.name, data: item.data, idem: `p${item.seq}` });
  }

  /** Sends the room's queued publishes again, in call order, after `ms` (one timer per room). */
  #retryRoomAfter(room, ms) {
    if (room.retryTimer) return;
    room.retryTimer = setTimeout(() => {
      room.retryTimer = null;
      if (room.state === "joined" && this.state === "connected") this.#flushQueue(room);
      // Re-joining: the queue is flushed after the join reply.
      else if (room.state !== "joining") this.#rejectQueue(() => new StarlingError("left", `not in room ${room.name}`), room);
    }, ms);
  }

  /** Queues in call order; over queueLimit the oldest publish is dropped with `queue_overflow`. */
  #enqueue(item) {
    let at = this.#queue.length;
    while (at > 0 && this.#queue[at - 1].seq > item.seq) at--;
    this.#queue.splice(at, 0, item);
    while (this.#queue.length > this.options.queueLimit) {
      this.#queue.shift().reject(new StarlingError("queue_overflow", "dropped from the full offline queue"));
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
      else item.reject(makeError());
    }
    this.#queue = keep;
  }

  #send(frame) {
    if (this.#ws && this.#ws.readyState === 1) this.#ws.send(JSON.stringify(frame));
  }

  /** Drops the current socket, its timers and waits, and fails every request in flight on it. */
  #teardown(code, reason, makeError = () => new StarlingError("disconnected", "the connection was lost before the reply")) {
    this.#generation++;
    for (const name of Object.keys(this.#timers)) this.#clearTimer(name);
    for (const entry of this.#delays) {
      clearTimeout(entry.timer);
      entry.resolve();
    }
    this.#delays.clear();
    this.#joinQueue = [];
    this.#joinsInFlight = 0;
    this.#joinResumeAt = 0;
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
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const waiter of pending) {
      clearTimeout(waiter.timer);
      waiter.reject(makeError());
    }
    for (const room of this.#rooms.values()) room.markDisconnected();
  }

  /** State `closed` until connect(): everything pending is settled now, nothing is left running. */
  #stop(code, reason, byClient) {
    this.#stopped = true;
    const closed = () => new StarlingError("closed", byClient ? "the client was closed" : `connection closed: ${code} ${reason}`);
    // Requests in flight: `closed` when the app closed; `disconnected`
    // when the server ended the link (a publish may have been delivered).
    this.#teardown(byClient ? 1000 : 4000, reason, byClient ? closed : undefined);
    for (const room of this.#rooms.values()) {
      if (!room.joinedOnce) room.settleReady.reject(closed());
      clearTimeout(room.retryTimer);
      room.retryTimer = null;
    }
    for (const item of [...this.#publishes]) {
      this.#dequeue(item);
      item.reject(closed());
    }
    this.#queue = [];
    this.#setState("closed", { code, reason });
  }

  #lost({ code, reason, opened }) {
    if (this.state === "closed") return;
    const policy = policyFor(code);
    if (policy.action === "refresh") this.#authFailures++;
    if (policy.action === "stop" || this.#authFailures > this.options.maxAuthFailures) {
      this.#stop(code, reason || policy.why, false);
      return;
    }
    this.#teardown(4000, reason);
    if (policy.rotate || !opened) this.#urlIndex = (this.#urlIndex + 1) % this.urls.length;
    const { minReconnectDelayMs: min, maxReconnectDelayMs: max } = this.options;
    let delayMs;
    if (policy.action === "refresh" && this.#authFailures <= 1) delayMs = 0;
    else if (policy.action === "slow") {
      delayMs = Math.max(this.options.rateLimitedDelayMs, this.#lastRetryAfterMs) + backoffDelay(0, min, max);
    } else delayMs = backoffDelay(this.#attempt, min, max);
    this.#attempt++;
    // Armed before the event, so a listener calling connect() cancels it.
    const timer = setTimeout(() => {
      if (this.#timers.reconnect !== timer) return;
      this.#timers.reconnect = null;
      this.#open();
    }, delayMs);
    this.#timers.reconnect = timer;
    this.#setState("disconnected", { code, reason: reason || policy.why, delayMs, nextUrl: this.url });
  }
}
