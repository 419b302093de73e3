// livefeed browser client: WebSocket with SSE fallback, resume from the last feed id,
// reconnect with backoff, dedupe by id, reload history on `reset`. No build step.
(function (global) {
  "use strict";

  // The gateway's contract, copied from livefeed/schemas/frames.py (CloseCode, FrameType);
  // tests/schemas/test_frames.py keeps these equal to the Python definitions.
  const CLOSE = { BAD_TOKEN: 4001, TOO_SLOW: 4008, DRAINING: 1012 };
  const FRAME_TYPES = ["hello", "event", "recovered", "reset"];
  const PAGE_MAX = 200; // GET /v1/feed's largest `limit`

  function parseId(id) {
    const [ms, seq] = String(id).split("-");
    return [Number(ms), Number(seq || 0)];
  }
  function newer(a, b) { // a > b for stream ids "ms-seq"
    if (!b) return true;
    const x = parseId(a), y = parseId(b);
    return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]);
  }
  function tokenUser(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part)).sub || "anon";
    } catch (e) { return "anon"; }
  }

  class LiveFeed {
    // options: token, base (default: this origin), transport ("auto"|"ws"|"sse"),
    // onEvent(event, {feedId, replayed}), onHistory(items), onReset(reason),
    // onStatus(status, detail)  status: connecting|replaying|live|offline|unauthorized,
    // historyLimit (default 200): at most that many history items are loaded at a time
    constructor(options) {
      this.opts = Object.assign({ base: "", transport: "auto", historyLimit: 200 }, options);
      this.token = this.opts.token;
      this.storeKey = "livefeed:last:" + tokenUser(this.token);
      this.lastId = global.localStorage ? global.localStorage.getItem(this.storeKey) : null;
      this.seen = new Set();      // event ids shown (uuid), across history and live
      this.seenOrder = [];
      this.attempt = 0;
      this.wsFailures = 0;
      this.transport = this.opts.transport === "sse" ? "sse" : "ws";
      this.replaying = false;
      this.stopped = false;
      this.conn = null;
    }

    start() {
      // History first, then live: with a stored last id (a reload) the page would otherwise
      // show only what arrives after it. Live resumes from that id; an event both in the
      // history and in the replay is shown once (dedupe by event id).
      this.stopped = false;
      this.loadHistory().finally(() => this.connect());
    }

    stop() {
      this.stopped = true;
      if (this.conn) this.conn.close();
      clearTimeout(this.timer);
    }

    url(path, params) {
      const base = this.opts.base || global.location.origin;
      const u = new URL(path, base);
      u.searchParams.set("token", this.token);
      for (const [k, v] of Object.entries(params || {})) if (v) u.searchParams.set(k, v);
      return u;
    }

    status(s, detail) {
      this.state = s;
      if (this.opts.onStatus) this.opts.onStatus(s, detail || this.transport);
    }

    // The persisted history, newest first, page after page (`next` is the `before` of the
    // next page) up to `historyLimit` items; onHistory(items) once per page, each item not
    // shown before.
    async loadHistory() {
      let before = null;
      let loaded = 0;
      try {
        while (loaded < this.opts.historyLimit) {
          const limit = String(Math.min(PAGE_MAX, this.opts.historyLimit - loaded));
          const res = await fetch(this.url("/v1/feed", { limit, before }));
          if (!res.ok) return;
          const page = await res.json();
          loaded += page.items.length;
          const fresh = page.items.filter((it) => this.remember(it.id));
          if (this.opts.onHistory) this.opts.onHistory(fresh);
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
      try {
        if (id) global.localStorage.setItem(this.storeKey, id);
        else global.localStorage.removeItem(this.storeKey);
      } catch (e) { /* private mode */ }
    }

    connect() {
      if (this.stopped) return;
      this.status("connecting");
      if (this.transport === "ws" && global.WebSocket) this.connectWs();
      else this.connectSse();
    }

    connectWs() {
      const u = this.url("/v1/ws", { last_id: this.lastId });
      u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
      const ws = new WebSocket(u);
      this.conn = ws;
      let opened = false;
      ws.onopen = () => { opened = true; this.wsFailures = 0; };
      // One message may carry several frames, one per line (the gateway coalesces).
      ws.onmessage = (m) => m.data.split("\n").forEach((line) => line && this.frame(JSON.parse(line)));
      ws.onclose = (e) => {
        if (this.conn !== ws) return;
        if (e.code === CLOSE.BAD_TOKEN) { this.stopped = true; this.status("unauthorized"); return; }
        if (!opened && this.opts.transport === "auto" && ++this.wsFailures >= 2) {
          this.transport = "sse"; // WebSocket blocked on the way: fall back to SSE
        }
        this.retry(e.code === CLOSE.DRAINING ? "draining" : "closed " + e.code);
      };
    }

    connectSse() {
      const es = new EventSource(this.url("/v1/sse", { last_id: this.lastId }));
      this.conn = es;
      for (const type of FRAME_TYPES) {
        es.addEventListener(type, (m) => this.frame(JSON.parse(m.data)));
      }
      es.onerror = () => {
        if (this.conn !== es) return;
        // The server ended the stream (drain, too slow) or it broke: reconnect ourselves
        // with our own last id rather than EventSource's.
        es.close();
        this.retry("sse error");
      };
    }

    retry(why) {
      this.conn = null;
      this.status("offline", why);
      if (this.stopped) return;
      const delay = Math.min(10000, 250 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
      this.attempt += 1;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => {
        // Never saw an id: what arrived while we were away is only in the history.
        const before = this.lastId ? Promise.resolve() : this.loadHistory();
        before.finally(() => this.connect());
      }, delay);
    }

    frame(f) {
      switch (f.type) {
        case "hello":
          this.attempt = 0;
          this.replaying = Boolean(this.lastId) && f.mode === "streams";
          // A fresh connection is told where the feed ends: resume from there next time.
          if (!this.lastId && f.last_id) this.saveLast(f.last_id);
          this.status(this.replaying ? "replaying" : "live");
          break;
        case "event":
          if (this.lastId && !newer(f.id, this.lastId)) return; // already had it
          this.saveLast(f.id);
          if (this.remember(f.data && f.data.id) && this.opts.onEvent) {
            this.opts.onEvent(f.data, { feedId: f.id, replayed: this.replaying });
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
          if (this.opts.onReset) this.opts.onReset(f.reason);
          this.loadHistory();
          this.status("live", "reset: " + f.reason);
          break;
      }
    }
  }

  global.LiveFeed = LiveFeed;
})(window);
