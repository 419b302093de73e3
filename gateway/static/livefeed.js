// livefeed browser client: an ES module, no build step; its API is in livefeed.d.ts.
// WebSocket (SSE as fallback or by choice), resume from the last feed id, full-jitter
// reconnect backoff, a watchdog on a silent server, reconnect at once when the browser comes
// back online, a fresh token from getToken() on every (re)connect, dedupe by id, history
// reload on `reset`, and one connection per browser shared by all tabs of the origin.

// The gateway's contract, copied from livefeed/schemas/frames.py (CloseCode, FrameType);
// tests/schemas/test_frames.py keeps these equal to the Python definitions.
const CLOSE = { BAD_TOKEN: 4001, TOKEN_EXPIRED: 4003, TOO_SLOW: 4008, DRAINING: 1012, LIMITED: 4029 };
const FRAME_TYPES = ["hello", "event", "recovered", "reset", "ping", "expired"];
const PAGE_MAX = 200; // GET /v1/feed's largest `limit`
const SHARED_RECENT = 1000; // event frames a leader keeps for tabs that join late

export const DEFAULTS = Object.freeze({
  transport: "auto",
  share: true,
  remember: true,
  historyLimit: 200,
  backoffBaseMs: 500,
  backoffMaxMs: 20000,
  watchdogMs: 40000, // ~2.5 x the server's 15 s keepalive (WebSocket and SSE)
  limitedMs: 5000,
});

// ---------------------------------------------------------------------------------------
// The authentication step (PROTOCOL.md): the only code that knows how a token travels.
// No token in any URL: HTTP requests carry `Authorization: Bearer`, a WebSocket sends
// {"type":"auth"} as its first message, an EventSource uses a single-use ticket from
// POST /v1/tickets.
// ---------------------------------------------------------------------------------------

function bearer(token) {
  return { authorization: "Bearer " + token };
}

/** GET an HTTP API of the gateway (`/v1/feed`) as the token's user. */
function authFetch(u, token) {
  return fetch(u, { headers: bearer(token) });
}

function wsUrl(base, lastId) {
  const u = new URL("/v1/ws", base);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  if (lastId) u.searchParams.set("last_id", lastId);
  return u;
}

function wsAuthMessage(token) {
  return JSON.stringify({ type: "auth", token });
}

function wsRefreshMessage(token) {
  return JSON.stringify({ type: "refresh", token });
}

class Unauthorized extends Error {}

async function sseUrl(base, token, lastId) {
  const u = new URL("/v1/sse", base);
  if (lastId) u.searchParams.set("last_id", lastId);
  const res = await fetch(new URL("/v1/tickets", base), { method: "POST", headers: bearer(token) });
  if (res.status === 401) throw new Unauthorized("ticket refused");
  if (!res.ok) throw new Error("ticket: HTTP " + res.status);
  u.searchParams.set("ticket", (await res.json()).ticket);
  return u;
}

// ---------------------------------------------------------------------------------------

function parseId(id) {
  const [ms, seq] = String(id).split("-");
  return [Number(ms), Number(seq || 0)];
}

function newer(a, b) { // a > b for stream ids "ms-seq"
  if (!b) return true;
  const x = parseId(a), y = parseId(b);
  return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]);
}

function claims(token) { // read, not verified: the server verifies
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part)) || {};
  } catch (e) { return {}; }
}

function storage() {
  try { return globalThis.localStorage || null; } catch (e) { return null; }
}

/** Full jitter: a random delay between 0 and min(max, base * 2^attempt). */
export function backoffDelay(attempt, baseMs = DEFAULTS.backoffBaseMs, maxMs = DEFAULTS.backoffMaxMs) {
  return Math.random() * Math.min(maxMs, baseMs * 2 ** attempt);
}

/** One live connection (WebSocket or SSE) with its reconnect loop; frames go to `feed`. */
class Connection {
  constructor(feed) {
    this.feed = feed;
    this.opts = feed.opts;
    this.transport = this.opts.transport === "sse" || !globalThis.WebSocket ? "sse" : "ws";
    this.attempt = 0;
    this.wsFailures = 0;
    this.conn = null;
    this.gen = 0; // bumped per attempt: callbacks of an older attempt are ignored
    this.stopped = false;
    this.rejected = null; // a token the server refused (BAD_TOKEN): never sent again
    this.expiredInARow = 0;
    this.onOnline = () => this.reconnectNow("online");
    this.onOffline = () => this.drop("browser offline");
    globalThis.addEventListener?.("online", this.onOnline);
    globalThis.addEventListener?.("offline", this.onOffline);
  }

  stop() {
    this.stopped = true;
    this.teardown();
    clearTimeout(this.retryTimer);
    globalThis.removeEventListener?.("online", this.onOnline);
    globalThis.removeEventListener?.("offline", this.onOffline);
  }

  teardown() {
    this.gen += 1;
    clearTimeout(this.watchdog);
    clearTimeout(this.refreshTimer);
    const c = this.conn;
    this.conn = null;
    if (c) c.close();
  }

  async connect() {
    clearTimeout(this.retryTimer);
    if (this.stopped) return;
    this.teardown();
    const gen = this.gen;
    this.feed.status("connecting", this.transport);
    let token;
    try {
      token = await this.feed.token();
    } catch (e) {
      if (gen === this.gen) this.retry("getToken failed: " + e);
      return;
    }
    if (gen !== this.gen || this.stopped) return;
    if (token === this.rejected) {
      this.stop();
      this.feed.status("unauthorized", "getToken() returned the refused token again");
      return;
    }
    this.token = token;
    this.arm(gen); // until the first frame: a handshake that hangs counts as silence
    if (this.transport === "ws") this.openWs(gen, token);
    else this.openSse(gen, token);
  }

  // The watchdog: no frame for watchdogMs => the connection is dead, reconnect. The server
  // sends a `ping` frame on an idle connection every LIVEFEED_KEEPALIVE (15 s), over
  // WebSocket and SSE alike.
  arm(gen) {
    clearTimeout(this.watchdog);
    if (!this.opts.watchdogMs) return;
    this.watchdog = setTimeout(() => {
      if (gen === this.gen) this.lost("watchdog: server silent");
    }, this.opts.watchdogMs);
  }

  heard(gen, f) {
    if (gen !== this.gen) return;
    this.arm(gen); // any frame, `ping` included (WebSocket and SSE), proves the link alive
    if (f.type === "ping") return;
    if (f.type === "hello") {
      this.attempt = 0;
      this.expiredInARow = 0;
      this.wsFailures = 0;
      this.scheduleRefresh(gen);
    }
    if (f.type === "expired") { // SSE's last frame: a fresh token, at once
      this.lost("token expired", this.renewDelay());
      return;
    }
    this.feed.frame(f);
  }

  openWs(gen, token) {
    const ws = new WebSocket(wsUrl(this.feed.base, this.feed.lastId));
    this.conn = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      ws.send(wsAuthMessage(token));
    };
    // One message may carry several frames, one per line (the gateway coalesces them).
    ws.onmessage = (m) => {
      for (const line of String(m.data).split("\n")) if (line) this.heard(gen, JSON.parse(line));
    };
    ws.onclose = (e) => {
      if (gen !== this.gen) return;
      this.conn = null;
      this.closed(e.code, opened);
    };
  }

  // While connected over WebSocket, push the token's expiry back before it passes
  // (`refresh`); a server that closes with TOKEN_EXPIRED anyway gets a fresh connection.
  scheduleRefresh(gen) {
    clearTimeout(this.refreshTimer);
    if (this.transport !== "ws") return;
    const exp = claims(this.token).exp;
    if (!exp) return;
    const delay = Math.max(1000, (exp * 1000 - Date.now()) * 0.75);
    this.refreshTimer = setTimeout(async () => {
      let token;
      try { token = await this.feed.token(); } catch (e) { return; }
      if (gen !== this.gen || !this.conn || token === this.token) return;
      this.token = token;
      this.conn.send(wsRefreshMessage(token));
      this.scheduleRefresh(gen);
    }, delay);
  }

  async openSse(gen, token) {
    let url;
    try {
      url = await sseUrl(this.feed.base, token, this.feed.lastId);
    } catch (e) {
      if (gen !== this.gen) return;
      if (e instanceof Unauthorized) this.closed(CLOSE.BAD_TOKEN, true);
      else this.retry(String(e.message || e));
      return;
    }
    if (gen !== this.gen) return;
    const es = new EventSource(url);
    this.conn = es;
    for (const type of FRAME_TYPES) {
      es.addEventListener(type, (m) => this.heard(gen, JSON.parse(m.data)));
    }
    es.onerror = () => {
      // The server ended the stream (drain, too slow) or it broke: reconnect ourselves
      // with our own last id rather than EventSource's.
      if (gen === this.gen) this.lost("sse error");
    };
  }

  lost(why, delay) {
    this.teardown();
    this.retry(why, delay);
  }

  drop(why) { // the browser says it is offline: wait for `online` (or the backoff)
    if (this.stopped) return;
    this.lost(why);
  }

  closed(code, opened) {
    if (code === CLOSE.BAD_TOKEN) {
      this.rejected = this.token; // the next attempt asks getToken() for another one
      this.retry("bad token");
      return;
    }
    if (code === CLOSE.TOKEN_EXPIRED) { this.retry("token expired", this.renewDelay()); return; }
    if (!opened && this.opts.transport === "auto" && ++this.wsFailures >= 2) {
      this.transport = "sse"; // WebSocket blocked on the way: fall back to SSE
    }
    if (code === CLOSE.LIMITED) { this.retry("limited", this.limitedDelay()); return; }
    const why = code === CLOSE.DRAINING ? "draining" : code === CLOSE.TOO_SLOW ? "too slow" : "closed " + code;
    this.retry(why);
  }

  // Refused by a connection limit (LIMITED, when the gateway has that code): seconds, not
  // the usual first fraction of one: half the step fixed, half random ("equal jitter").
  limitedDelay() {
    const step = Math.min(this.opts.backoffMaxMs, Math.max(this.opts.limitedMs, this.opts.backoffBaseMs * 2 ** this.attempt));
    this.attempt += 1;
    return step / 2 + Math.random() * step / 2;
  }

  // After an expiry a fresh token at once; a second expiry before any `hello` (getToken()
  // keeps returning stale tokens, or the clocks disagree) waits the backoff.
  renewDelay() {
    return this.expiredInARow++ ? undefined : 0;
  }

  retry(why, delay) {
    this.feed.status("offline", why);
    if (this.stopped) return;
    if (delay === undefined) {
      delay = backoffDelay(this.attempt, this.opts.backoffBaseMs, this.opts.backoffMaxMs);
      this.attempt += 1;
    }
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.reconnect(), delay);
  }

  reconnectNow(why) {
    if (this.stopped || this.conn) return;
    this.attempt = 0;
    this.feed.status("connecting", why);
    this.reconnect();
  }

  reconnect() {
    clearTimeout(this.retryTimer);
    // Never saw an id: what arrived while we were away is only in the history.
    const before = this.feed.lastId ? Promise.resolve() : this.feed.loadHistory();
    before.finally(() => this.connect());
  }
}

/** The feed of one tab: dedupe, last id, history, callbacks; and the sharing between tabs. */
export class LiveFeed {
  constructor(options) {
    this.opts = Object.assign({}, DEFAULTS, options);
    if (typeof this.opts.getToken !== "function") throw new TypeError("getToken() is required");
    this.base = String(new URL(this.opts.url || globalThis.location.origin, globalThis.location.href).origin);
    this.lastId = null;
    this.seen = new Set(); // event ids shown (uuid), across history and live
    this.seenOrder = [];
    this.replaying = false;
    this.state = "offline";
    this.role = "solo"; // "leader" | "follower" | "solo"
    this.closed = false;
    this.connection = null;
    this.channel = null;
    this.inbox = null; // a follower's frames before it is ready
    this.recent = []; // recent event frames: a leader's catch-up for tabs that join
    this.released = new Promise((resolve) => { this.release = resolve; });
  }

  token() {
    return Promise.resolve(this.opts.getToken());
  }

  async start() {
    let token = null;
    try { token = await this.token(); } catch (e) { /* the connection retries it */ }
    if (this.closed) return;
    const user = (token && claims(token).sub) || "anon";
    this.storeKey = "livefeed:last:" + user;
    if (this.opts.lastId !== undefined) this.lastId = this.opts.lastId;
    else if (this.opts.remember) this.lastId = storage()?.getItem(this.storeKey) || null;
    const sharing = this.opts.share && globalThis.BroadcastChannel && globalThis.navigator?.locks;
    if (sharing) this.join("livefeed:" + this.base + ":" + user + ":" + this.opts.transport);
    // History first, then live: with a stored last id (a reload) the page would otherwise
    // show only what arrives after it. Live resumes from that id; an event both in the
    // history and in the replay is shown once (dedupe by event id).
    await this.loadHistory();
    if (this.closed) return;
    if (!sharing) this.lead();
    else this.inboxReady("history");
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.connection) this.connection.stop();
    this.release();
    this.abort?.abort();
    if (this.channel) this.channel.close();
    this.status("offline", "closed");
  }

  // ---- tab sharing: Web Locks elect the leader, BroadcastChannel carries its frames ----

  join(name) {
    this.role = "follower";
    this.inbox = [];
    this.waiting = new Set(["history", "welcome"]);
    this.channel = new BroadcastChannel(name);
    this.channel.onmessage = (m) => this.heard(m.data);
    this.tabId = Math.random().toString(36).slice(2);
    this.channel.postMessage({ t: "who", from: this.tabId, lastId: this.lastId });
    this.abort = new AbortController();
    navigator.locks.request(name, { signal: this.abort.signal }, () => {
      if (this.closed) return undefined;
      this.inboxReady("welcome"); // no leader to hear from now: we are it
      this.lead();
      return this.released; // held until close() or the tab goes away
    }).catch(() => { /* aborted by close() */ });
  }

  lead() {
    if (this.channel) {
      this.role = "leader";
      // Tabs that asked "who" before this one held the lock ask again.
      this.channel.postMessage({ t: "leader" });
      this.status(this.state, "leader");
    }
    this.connection = new Connection(this);
    if (this.inbox === null) this.connection.connect();
    else this.pendingConnect = true;
  }

  heard(msg) {
    if (this.closed) return;
    if (msg.t === "who") {
      if (this.role !== "leader") return;
      const frames = this.recent.filter((r) => !msg.lastId || newer(r.f.id, msg.lastId));
      this.channel.postMessage({ t: "welcome", to: msg.from, frames, lastId: this.lastId,
                                 state: this.state, detail: this.detail });
    } else if (this.role === "leader") {
      return; // frames of a former leader still in flight
    } else if (msg.t === "leader") {
      // A new leader (a hand-over, or tabs that asked before any held the lock): hold its
      // frames, and any a former leader still has in flight, until it answered with what
      // it has after our last id; then those first: nothing is skipped as out of order.
      if (this.inbox === null) {
        this.inbox = [];
        this.waiting = new Set(["welcome"]);
      }
      if (this.waiting.has("welcome")) {
        this.channel.postMessage({ t: "who", from: this.tabId, lastId: this.lastId });
      }
    } else if (msg.t === "welcome") {
      if (msg.to !== this.tabId || !this.waiting?.has("welcome")) return; // another tab's
      if (!this.lastId && msg.lastId && !msg.frames.length) this.lastId = msg.lastId;
      this.inbox.unshift(...msg.frames);
      this.status(msg.state, msg.detail);
      this.inboxReady("welcome");
    } else if (msg.t === "frame") {
      if (this.inbox !== null) this.inbox.push(msg);
      else this.apply(msg.f, msg.replayed);
    } else if (msg.t === "status") {
      this.status(msg.s, msg.detail);
    }
  }

  inboxReady(what) {
    if (!this.waiting) return;
    this.waiting.delete(what);
    if (this.waiting.size) return;
    const inbox = this.inbox;
    this.inbox = null;
    this.waiting = null;
    for (const m of inbox) this.apply(m.f, m.replayed);
    if (this.pendingConnect) this.connection.connect();
  }

  // ---- frames: the leader's (or a solo tab's) own, and a follower's from the channel ----

  frame(f) {
    if (f.type === "hello") this.replaying = Boolean(this.lastId) && f.mode === "streams";
    const replayed = this.replaying;
    if (this.channel && this.role === "leader") this.channel.postMessage({ t: "frame", f, replayed });
    this.apply(f, replayed);
  }

  apply(f, replayed) {
    switch (f.type) {
      case "hello":
        // A fresh connection is told where the feed ends: resume from there next time.
        if (!this.lastId && f.last_id) this.saveLast(f.last_id);
        this.status(replayed ? "replaying" : "live", "hello");
        break;
      case "event":
        if (this.lastId && !newer(f.id, this.lastId)) return; // already had it
        this.saveLast(f.id);
        if (this.channel) { // every tab: it may lead next
          this.recent.push({ t: "frame", f, replayed });
          if (this.recent.length > SHARED_RECENT) this.recent.shift();
        }
        if (this.remember(f.data && f.data.id) && this.opts.onEvent) {
          this.opts.onEvent(f.data, { feedId: f.id, replayed });
        }
        break;
      case "recovered":
        this.replaying = false;
        this.status("live", "recovered " + f.count);
        break;
      case "reset":
        // The gap cannot be replayed: reload the persisted history, continue live.
        this.replaying = false;
        this.saveLast(f.last_id || null); // where the server carries on from
        if (this.opts.onReset) this.opts.onReset({ reason: f.reason, lastId: f.last_id || null });
        this.loadHistory();
        this.status("live", "reset: " + f.reason);
        break;
    }
  }

  status(s, detail) {
    this.state = s;
    this.detail = detail;
    if (this.channel && this.role === "leader" && !this.closed) {
      this.channel.postMessage({ t: "status", s, detail });
    }
    if (this.opts.onStatus) this.opts.onStatus(s, { detail: detail || "", role: this.role });
  }

  // The persisted history, newest first, page after page (`next` is the `before` of the
  // next page) up to `historyLimit` items; onHistory(items) once per page, each item not
  // shown before.
  async loadHistory() {
    if (!this.opts.onHistory || !this.opts.historyLimit) return;
    let before = null;
    let loaded = 0;
    try {
      const token = await this.token();
      while (loaded < this.opts.historyLimit && !this.closed) {
        const u = new URL("/v1/feed", this.base);
        u.searchParams.set("limit", String(Math.min(PAGE_MAX, this.opts.historyLimit - loaded)));
        if (before) u.searchParams.set("before", before);
        const res = await authFetch(u, token);
        if (!res.ok) return;
        const page = await res.json();
        loaded += page.items.length;
        const fresh = page.items.filter((it) => this.remember(it.id));
        this.opts.onHistory(fresh);
        if (!page.next || page.items.length === 0) return;
        before = page.next;
      }
    } catch (e) { /* offline: live delivery still resumes */ }
  }

  remember(eventId) {
    if (!eventId) return true;
    if (this.seen.has(eventId)) return false;
    this.seen.add(eventId);
    this.seenOrder.push(eventId);
    if (this.seenOrder.length > 5000) this.seen.delete(this.seenOrder.shift());
    return true;
  }

  saveLast(id) {
    this.lastId = id;
    if (!this.opts.remember || this.role === "follower") return; // the leader stores it
    try {
      if (id) storage()?.setItem(this.storeKey, id);
      else storage()?.removeItem(this.storeKey);
    } catch (e) { /* private mode */ }
  }
}

/** Start a feed: history (if onHistory is given), then live events. */
export function connect(options) {
  const feed = new LiveFeed(options);
  feed.start();
  return feed;
}

export { CLOSE, FRAME_TYPES };
