// A Socket.IO 4.8 peer for bench/compare.sh: WebSocket transport only,
// events `join` and `leave` (acknowledged with {ok:true}) and `publish`
// (room, data), which broadcasts `message` (room, data) to the whole room,
// the publisher included, as Starling does.
//
//   PORT=7000 node socketio-server.js                 # one process
//   PORT=7000 REDIS_URL=redis://127.0.0.1:6379 node socketio-server.js
//                                                      # with the Redis adapter
"use strict";
const http = require("http");
const { Server } = require("socket.io");

async function main() {
  const port = Number(process.env.PORT);
  if (!port) throw new Error("PORT is required");
  const io = new Server({
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
  });
  if (process.env.REDIS_URL) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-adapter");
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(room);
      if (typeof ack === "function") ack({ ok: true });
    });
    socket.on("leave", (room, ack) => {
      socket.leave(room);
      if (typeof ack === "function") ack({ ok: true });
    });
    socket.on("publish", (room, data) => {
      io.to(room).emit("message", room, data);
    });
  });
  // Loopback only, like every other peer in the comparison.
  const httpServer = http.createServer();
  io.attach(httpServer);
  await new Promise((resolve, reject) => {
    httpServer.once("error", reject);
    httpServer.listen(port, "127.0.0.1", resolve);
  });
  console.error(`socket.io peer listening on ${port}${process.env.REDIS_URL ? " with redis" : ""}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
