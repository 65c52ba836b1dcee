// A Node.js http2 server (h2c) whose app calls session.goaway(0, stream.id) every Nth stream,
// the real bug behind h2guard's trust_goaway="learn": the streams above that id still reach
// the app. POST /orders records an effect per x-request-id; GET /ledger reports them.
// Usage: node goaway_server.js EVERY   (prints "listening PORT" when ready)
"use strict";
const http2 = require("http2");
const every = parseInt(process.argv[2] || "5", 10);
const effects = new Map();
let streams = 0;
const server = http2.createServer();
server.on("stream", (stream, headers) => {
  const path = headers[":path"];
  if (path === "/ledger") {
    const body = JSON.stringify(Object.fromEntries(effects));
    stream.respond({ ":status": 200, "content-type": "application/json" });
    stream.end(body);
    return;
  }
  streams += 1;
  const rid = headers["x-request-id"] || `anon-${streams}`;
  const chunks = [];
  stream.on("data", (c) => chunks.push(c));
  stream.on("end", () => {
    effects.set(rid, (effects.get(rid) || 0) + 1);  // the side effect: it ran
    if (streams % every === 0 && !stream.session.destroyed) {
      stream.session.goaway(0, stream.id);  // "nothing above this id was processed" - wrong
    }
    setTimeout(() => {
      if (stream.destroyed || stream.closed) return;
      try {
        stream.respond({ ":status": 201, "content-type": "application/json" });
        stream.end(JSON.stringify({ order: rid }));
      } catch (e) { /* the session went away */ }
    }, 5);
  });
  stream.on("error", () => {});
});
server.on("sessionError", () => {});
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
