// Real `starling` processes for the JS tests: a single node or a 3-node
// cluster on free loopback ports, each with a config file written to a temp
// dir. Every process is SIGKILLed when the test's `stop()` runs. Waits poll a
// condition with a deadline; nothing sleeps to synchronise.

import { execFileSync, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import dgram from "node:dgram";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const SECRET = "js-client-test-secret-0123456789abcdef";
export const API_KEY = "js-client-test-api-key";
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const BIN = process.env.STARLING_BIN || join(REPO, "target/debug/starling");

/** Polls `check` (may be async; truthy = done) until it passes or `timeoutMs` ends. */
export async function eventually(what, check, timeoutMs = 15000, everyMs = 20) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Resolves with the first emission of `event` on `emitter` (deadline-bounded). */
export function nextEvent(emitter, event, timeoutMs = 10000, accept = () => true) {
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${event} event within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = emitter.on(event, (value) => {
      if (!accept(value)) return;
      clearTimeout(timer);
      off();
      resolvePromise(value);
    });
  });
}

/** Resolves or rejects like `promise`, or rejects once `timeoutMs` has passed. */
export function within(what, promise, timeoutMs = 10000) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** An HS256 JWT signed with SECRET (or `secret`). */
export function mintToken(sub, { ttlSecs = 3600, rooms = ["chat:*", "nohistory:*"], secret = SECRET } = {}) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, rooms, exp: Math.floor(Date.now() / 1000) + ttlSecs })}`;
  const signature = createHmac("sha256", secret).update(body).digest("base64url");
  return `${body}.${signature}`;
}

async function freeTcpPort() {
  const server = net.createServer();
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return server;
}

async function freeUdpPort() {
  const socket = dgram.createSocket("udp4");
  await new Promise((r) => socket.bind(0, "127.0.0.1", r));
  return socket;
}

/** Ports for `count` nodes: all held until all are chosen, then released. */
async function freePorts(count) {
  const held = [];
  const ports = [];
  for (let i = 0; i < count; i++) {
    const tcp = [await freeTcpPort(), await freeTcpPort(), await freeTcpPort()];
    const udp = await freeUdpPort();
    held.push(...tcp, udp);
    const [client, api, peer] = tcp.map((s) => s.address().port);
    ports.push({ client, api, peer, gossip: udp.address().port });
  }
  await Promise.all(held.map((h) => new Promise((r) => h.close(r))));
  return ports;
}

/** Makes the cluster's CA, gossip key and node certificates with `starling cert`. */
function makeCerts(dir, names) {
  const certs = join(dir, "certs");
  execFileSync(BIN, ["cert", "create-ca", "--dir", certs]);
  for (const name of names) execFileSync(BIN, ["cert", "create-node", name, "--dir", certs]);
  return certs;
}

/** The lines that make a cluster node secure: sealed gossip and mutual TLS between nodes. */
function peerSecurity(certs, name) {
  return `gossip_key_file = "${join(certs, "gossip.key")}"
[cluster.tls]
ca = "${join(certs, "ca.crt")}"
cert = "${join(certs, `${name}.crt`)}"
key = "${join(certs, `${name}.key`)}"
`;
}

function configToml({ name, dataDir, ports, seeds, heartbeatMs, certs, extraConfig }) {
  const at = (port) => `"127.0.0.1:${port}"`;
  return `[node]
name = "${name}"
data_dir = "${dataDir}"

[listen]
client = ${at(ports.client)}
api = ${at(ports.api)}
peer = ${at(ports.peer)}
gossip = ${at(ports.gossip)}
${seeds ? `\n[cluster]\nid = "js-client-test"\nseeds = [${seeds.map(at).join(", ")}]\nbootstrap_expect = ${seeds.length}\n${certs ? peerSecurity(certs, name) : ""}` : ""}
[auth]
jwt_hs256_secret = "${SECRET}"
api_key = "${API_KEY}"
jwt_leeway_secs = 0
allowed_origins = ["*"]

[api]
demo = true

[websocket]
heartbeat_ms = ${heartbeatMs}

[log]
level = "info"
format = "json"

[[namespaces]]
name = "chat"
history_size = 200

[[namespaces]]
name = "nohistory"
${extraConfig}`;
}

class NodeProcess {
  constructor(spec) {
    this.spec = spec;
    this.name = spec.name;
    this.wsUrl = `ws://127.0.0.1:${spec.ports.client}/ws`;
    this.apiUrl = `http://127.0.0.1:${spec.ports.api}`;
    this.log = [];
    this.exited = false;
    this.child = spawn(BIN, ["--config", spec.configPath], {
      stdio: ["ignore", "ignore", "pipe"],
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("STARLING_") && k !== "RUST_LOG")),
    });
    this.child.stderr.setEncoding("utf8");
    this.child.stderr.on("data", (chunk) => this.log.push(chunk));
    this.exit = new Promise((r) => this.child.on("exit", () => r((this.exited = true))));
  }

  async waitStarted() {
    await eventually(`${this.name} to start`, () => {
      if (this.exited) throw new Error(`${this.name} exited:\n${this.log.join("").slice(-3000)}`);
      return this.log.join("").includes('"node started"');
    });
  }

  async api(path) {
    const response = await fetch(`${this.apiUrl}${path}`, {
      headers: { authorization: `Bearer ${API_KEY}` },
      signal: AbortSignal.timeout(2000),
    });
    return { status: response.status, body: await response.json() };
  }

  /** kill -9, and wait for the process to be gone. */
  async kill() {
    this.child.kill("SIGKILL");
    await this.exit;
  }
}

/** Starts `size` nodes (1 = single node; 3 = a cluster) and waits until they serve. */
export async function startNodes(size, { heartbeatMs = 25000, extraConfig = "" } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "starling-js-"));
  const ports = await freePorts(size);
  const seeds = size > 1 ? ports.map((p) => p.gossip) : null;
  const certs = size > 1 ? makeCerts(dir, ports.map((_, i) => `node-${i + 1}`)) : null;
  const specs = ports.map((p, i) => {
    const name = `node-${i + 1}`;
    const configPath = join(dir, `${name}.toml`);
    writeFileSync(configPath, configToml({ name, dataDir: join(dir, name), ports: p, seeds, heartbeatMs, certs, extraConfig }));
    return { name, ports: p, configPath };
  });
  const nodes = specs.map((spec) => new NodeProcess(spec));
  const cluster = {
    nodes,
    dir,
    async restart(i) {
      nodes[i] = new NodeProcess(specs[i]);
      await nodes[i].waitStarted();
    },
    /** Every live node lists the `live` nodes and the same leader; returns its name. */
    async leader(live = nodes.filter((n) => !n.exited).length) {
      return eventually("one leader known to every live node", async () => {
        const leaders = new Set();
        for (const node of nodes.filter((n) => !n.exited)) {
          const { body } = await node.api("/api/cluster");
          if (!body.leader || body.nodes.length !== live) return false;
          leaders.add(body.leader);
        }
        return leaders.size === 1 ? [...leaders][0] : false;
      }, 20000);
    },
    async stop() {
      for (const node of nodes) if (!node.exited) await node.kill();
      rmSync(dir, { recursive: true, force: true });
    },
    dump() {
      return nodes.map((n) => `---- ${n.name}\n${n.log.join("").split("\n").filter((l) => l.includes('"target":"starling')).slice(-15).join("\n")}`).join("\n");
    },
  };
  try {
    for (const node of nodes) await node.waitStarted();
    if (size > 1) await cluster.leader(size);
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  return cluster;
}
