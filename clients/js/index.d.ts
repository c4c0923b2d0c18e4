// Type declarations for src/starling.js (hand-written; keep them in step).

export type ConnectionState = "connecting" | "connected" | "disconnected" | "closed";
export type RoomState = "joining" | "joined" | "left" | "failed";
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A member of a room: one connection of one user. */
export interface Member {
  user: string;
  conn: string;
  node: string;
  meta: { [key: string]: Json };
}

/** The server's first frame on a connection. */
export interface Welcome {
  type: "welcome";
  conn: string;
  node: string;
  user: string;
  heartbeat_ms: number;
}

export interface Position {
  epoch: number;
  offset: number;
}

export interface JoinResult extends Position {
  room: string;
  members?: Member[];
}

export interface Message<T = Json> extends Position {
  data: T;
  /** Absent for messages published through the server API. */
  from?: { user: string; conn: string };
}

export interface Resubscribed extends Position {
  /** False when nothing was missed: the server replayed every message after
   * the last one seen (`recovered`), or the room is exactly where this
   * client left it. */
  missed: boolean;
  /** The server's history held every message after the last one seen and
   * replayed them before the re-join reply (wire v1.1 `since`). */
  recovered: boolean;
  previousEpoch: number | null;
  previousOffset: number | null;
}

export interface ClientOptions {
  /** One WebSocket URL (`ws://host:7601/ws`), or `urls`. */
  url?: string;
  /** Nodes to connect to, tried in order; the next one after a failure. */
  urls?: string[];
  /** A token, or a provider called before every (re)connect. */
  token: string | (() => string | Promise<string>);
  /** A WebSocket constructor; default: in Node the `ws` package if installed (it reports HTTP 401/503 at the upgrade, with the server's reason), else the global one. */
  WebSocket?: unknown;
  /** Connect at once (default true); otherwise call `connect()`. */
  autoConnect?: boolean;
  /** Backoff bounds (full jitter): defaults 250 and 10000 ms. */
  minReconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  /** Least wait after close 4029 (default 5000 ms). */
  rateLimitedDelayMs?: number;
  /** Deadline of every request, and of a publish from call to reply (default 10000 ms). */
  requestTimeoutMs?: number;
  /** Time allowed from socket creation to `welcome` (default 5000 ms). */
  connectTimeoutMs?: number;
  /** Silence allowed on top of `welcome.heartbeat_ms` before the link is declared dead (default 10000 ms). */
  heartbeatGraceMs?: number;
  /** Publishes held while rooms are not joined (default 100); when full the oldest is dropped. */
  queueLimit?: number;
  /** Retry publishes answered `rate_limited` or `unavailable` within their deadline (default true). */
  retryPublish?: boolean;
  /** Consecutive token refusals (1008, HTTP 401) before giving up (default 3). */
  maxAuthFailures?: number;
  /** Joins awaiting their reply at once (default 10); all joins pause on `rate_limited`. */
  maxJoinsInFlight?: number;
}

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  /** The close code, or `"http401"`, `"http503"`, ... for an upgrade the server refused (Node with `ws` only; browsers see 1006). */
  code?: number | string;
  /**
   * Why: the server's own words when it gave any (the close frame's reason,
   * or the plain-text body of a refused upgrade such as
   * `invalid token: bad signature`, read in Node with `ws` only), else the
   * client's explanation (the POLICY entry's `why`, `could not connect: ...`,
   * or, for a socket closed with 1006 before it opened where the WebSocket
   * tells nothing more, as in every browser, `refused or unreachable before
   * opening ...`).
   */
  reason?: string;
  delayMs?: number;
  url?: string;
  nextUrl?: string;
}

type Unsubscribe = () => void;

export class StarlingError extends Error {
  constructor(code: string, message?: string, retryAfterMs?: number);
  /** A wire-contract error code, or `timeout`, `disconnected`, `queue_overflow`, `closed`, `left`. */
  code: string;
  retryAfterMs?: number;
}

export interface PolicyEntry {
  action: "reconnect" | "refresh" | "slow" | "stop";
  rotate: boolean;
  why: string;
}

export const POLICY: Readonly<Record<string, PolicyEntry>>;
export const DEFAULTS: Readonly<Required<Omit<ClientOptions, "url" | "urls" | "token" | "WebSocket" | "autoConnect">>>;
export function policyFor(code: number | string): PolicyEntry;
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random?: () => number): number;

export class Room {
  readonly name: string;
  readonly meta: { [key: string]: Json } | undefined;
  readonly state: RoomState;
  readonly epoch: number | null;
  readonly offset: number | null;
  /** Resolves on the first successful join; rejects if that join fails, or the room is left or the client closed first. */
  readonly ready: Promise<JoinResult>;
  /** Members as last known, ordered by `conn`. */
  readonly members: Member[];
  publish<T extends Json>(data: T): Promise<Position>;
  presence(): Promise<Member[]>;
  leave(): Promise<void>;
  on(event: "message", listener: (message: Message) => void): Unsubscribe;
  on(event: "joined" | "left", listener: (member: Member) => void): Unsubscribe;
  on(event: "presence", listener: (members: Member[]) => void): Unsubscribe;
  on(event: "subscribed", listener: (position: Position) => void): Unsubscribe;
  on(event: "resubscribed", listener: (info: Resubscribed) => void): Unsubscribe;
  on(event: "error", listener: (error: StarlingError) => void): Unsubscribe;
  once: Room["on"];
  off(event: string, listener: (...args: any[]) => void): void;
}

export class StarlingClient {
  constructor(options: ClientOptions);
  readonly state: ConnectionState;
  readonly urls: string[];
  /** The URL of the current (or next) attempt. */
  readonly url: string;
  /** The current connection's `welcome`, null when not connected. */
  readonly session: Welcome | null;
  connect(): void;
  close(): void;
  join(room: string, meta?: { [key: string]: Json }): Room;
  presence(room: string): Promise<Member[]>;
  request(frame: { type: string; [key: string]: Json }, timeoutMs?: number): Promise<any>;
  on(event: "state", listener: (change: StateChange) => void): Unsubscribe;
  on(event: "connected", listener: (welcome: Welcome & { url: string }) => void): Unsubscribe;
  on(event: "connecting" | "disconnected" | "closed", listener: (detail: Omit<StateChange, "state" | "previous">) => void): Unsubscribe;
  once: StarlingClient["on"];
  off(event: string, listener: (...args: any[]) => void): void;
}
