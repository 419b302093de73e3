// livefeed bench baseline: a Node `ws` server that fans out pre-encoded frames.
//
// node ws_broadcast.mjs PORT REDIS_HOST REDIS_PORT PATTERN [prebuilt|send]
//
// Each WebSocket on /v1/ws with an `Authorization: Bearer <jwt>` header (the JWT's `sub`
// is the user, not verified; never a `?token=`, as at the gateway) gets a hello and idles.
// One Redis PSUBSCRIBE to PATTERN (a hand-rolled RESP reader: no Redis client library
// to install); each pmessage on `...:live:{user}` goes to that user's
// sockets. `prebuilt` (default) frames the message ONCE and writes the same bytes to
// every socket (encode once, write many); `send` calls ws.send per socket (the usual path).
import http from "node:http";
import net from "node:net";
import { WebSocketServer, Sender } from "ws";

const [port, redisHost, redisPort, pattern, mode = "prebuilt"] = process.argv.slice(2);
const sockets = new Map(); // user -> Set<WebSocket>

const server = http.createServer((req, res) => {
  res.writeHead(req.url === "/healthz" ? 200 : 404, { "Content-Type": "text/plain" });
  res.end(req.url === "/healthz" ? "ok" : "not found");
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });

server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url, "http://x");
  // Node lowers header names (they are case-insensitive); the scheme is matched the same way.
  const [scheme, token = ""] = (req.headers.authorization || "").trim().split(/\s+/, 2);
  let user;
  try {
    if (scheme.toLowerCase() !== "bearer") throw new Error("no bearer token");
    user = String(JSON.parse(Buffer.from(token.split(".")[1], "base64url")).sub);
  } catch {
    socket.end("HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n");
    return;
  }
  if (url.pathname !== "/v1/ws") {
    socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    let set = sockets.get(user);
    if (!set) sockets.set(user, (set = new Set()));
    set.add(ws);
    ws.on("close", () => set.delete(ws));
    ws.on("error", () => {});
    ws.send('{"type":"hello"}');
  });
});

function deliver(channel, data) {
  const set = sockets.get(channel.slice(channel.indexOf(":live:") + 6));
  if (!set) return;
  if (mode === "send") {
    for (const ws of set) ws.send(data, { binary: false });
    return;
  }
  const frame = Buffer.concat(
    Sender.frame(data, { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false }));
  for (const ws of set) ws._socket.write(frame);
}

// RESP: the replies to PSUBSCRIBE are arrays of bulk strings (and one integer).
let buf = Buffer.alloc(0);
function parse(pos) {
  // -> [value, next] or null when incomplete
  if (pos >= buf.length) return null;
  const end = buf.indexOf("\r\n", pos);
  if (end < 0) return null;
  const kind = String.fromCharCode(buf[pos]);
  const n = parseInt(buf.toString("latin1", pos + 1, end), 10);
  if (kind === "*") {
    const items = [];
    let at = end + 2;
    for (let i = 0; i < n; i++) {
      const got = parse(at);
      if (!got) return null;
      items.push(got[0]);
      at = got[1];
    }
    return [items, at];
  }
  if (kind === "$") {
    if (buf.length < end + 2 + n + 2) return null;
    return [buf.subarray(end + 2, end + 2 + n), end + 2 + n + 2];
  }
  return [n, end + 2]; // ':' integer (or '+'/'-': not expected)
}

const redis = net.connect(Number(redisPort), redisHost, () => {
  const cmd = ["PSUBSCRIBE", pattern];
  redis.write(`*${cmd.length}\r\n` + cmd.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join(""));
});
redis.on("data", (chunk) => {
  buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
  let at = 0;
  for (;;) {
    const got = parse(at);
    if (!got) break;
    at = got[1];
    const msg = got[0];
    if (Array.isArray(msg) && msg.length === 4 && msg[0].toString() === "pmessage") {
      deliver(msg[2].toString("latin1"), Buffer.from(msg[3]));
    }
  }
  buf = buf.subarray(at);
});
redis.on("error", (err) => {
  console.error("redis:", err.message);
  process.exit(1);
});

server.listen(Number(port), "127.0.0.1", 4096);
process.on("SIGTERM", () => process.exit(0));
