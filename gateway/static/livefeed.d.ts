// Types of gateway/static/livefeed.js, the livefeed browser client (an ES module, no build
// step): `import { connect } from "/static/livefeed.js"`. The wire protocol it speaks is in
// docs/design.md (Frames, Close codes, HTTP endpoints).

/** The newsletter event as stored (schemas/event.py), as `onEvent` and `onHistory` get it. */
export interface FeedEvent {
  id: string;
  user_id: string;
  subject: string;
  sender: string;
  received_at: string;
  preview?: string | null;
  [field: string]: unknown;
}

/**
 * The status shown to the user.
 * - `connecting`: opening a connection (`detail`: the transport, or why: `online`);
 * - `replaying`: connected with a last id, the missed events are arriving;
 * - `live`: caught up (`detail`: `hello`, `recovered <count>`, `reset: <reason>`);
 * - `offline`: not connected, a reconnect is scheduled (`detail`: why: `closed <code>`,
 *   `draining`, `too slow`, `limited`, `bad token`, `token expired`,
 *   `watchdog: server silent`,
 *   `browser offline`, `sse error`, or `closed` after `close()`);
 * - `unauthorized`: the server refused the token and `getToken()` returned that same token
 *   again: the client stopped (call `connect()` again with a working `getToken`).
 */
export type Status = "connecting" | "replaying" | "live" | "offline" | "unauthorized";

/**
 * Which tab runs the connection. `leader`: this tab holds the connection and passes its
 * frames to the other tabs; `follower`: another tab of this origin (same gateway, user and
 * `transport` option) does; `solo`: no sharing (`share: false`, or no Web Locks /
 * BroadcastChannel in this browser, or not a secure context).
 */
export type Role = "leader" | "follower" | "solo";

export interface EventInfo {
  /** The feed id ("<ms>-<seq>"), the resume point after this event. */
  feedId: string;
  /** Missed while disconnected and replayed after a reconnect. */
  replayed: boolean;
}

/**
 * The history after the client's last id cannot be replayed (`reset` frame): the stream
 * was trimmed past it (`trimmed`), it is not in the stream (`unknown_id`), or the user's
 * stream is gone (`stream_lost`). The client then reloads the persisted history
 * (`GET /v1/feed`, through `onHistory`, each event not shown before) and carries on live
 * from `lastId` (the feed's end; "0-0" for an empty feed), its new resume point. Events
 * already shown stay shown; nothing is left out silently.
 */
export interface ResetInfo {
  reason: "trimmed" | "unknown_id" | "stream_lost";
  lastId: string | null;
}

export interface Options {
  /**
   * A token for the user (a signed JWT, `livefeed token USER`). Called before every
   * connect and reconnect, before each history load, and ahead of the token's `exp` on a
   * WebSocket (sent as `refresh`): tokens can be short-lived. May return a promise. A
   * token the server refused (close 4001, or 401) is never sent again: if `getToken()`
   * returns it once more the client stops with status `unauthorized`.
   */
  getToken: () => string | Promise<string>;
  /** The gateway's origin; default: this page's. */
  url?: string;
  /**
   * `ws` (WebSocket), `sse` (EventSource, through a ticket from `POST /v1/tickets`), or
   * `auto` (default): WebSocket, switching to SSE after two WebSocket attempts that never
   * opened (blocked on the way).
   */
  transport?: "ws" | "sse" | "auto";
  /**
   * The feed id to resume from. Default: the one stored in `localStorage` for this user
   * (see `remember`), or none: then the server's `hello` gives the feed's end. `null`:
   * start fresh.
   */
  lastId?: string | null;
  /** Keep the last id in `localStorage` (`livefeed:last:<user>`); default true. */
  remember?: boolean;
  /**
   * One connection per browser (default true): all tabs of this origin with the same
   * gateway, user and `transport` share one. The Web Locks API
   * (`navigator.locks.request`) elects the leader tab, which connects and passes every
   * frame to the others over a `BroadcastChannel`; when it closes, the next tab takes the
   * lock and connects with its own last id, so the server replays whatever that tab has
   * not seen: no gap, and each tab still sees every event once (the other tabs first take
   * the new leader's recent events after their own last id, then its live ones). A tab
   * that opens while a leader runs gets the leader's recent events after its own last id
   * (up to 1000), the rest from the history.
   */
  share?: boolean;
  /** Live events, each once (deduplicated by feed id and event id). */
  onEvent?: (event: FeedEvent, info: EventInfo) => void;
  /**
   * Given: the persisted history is loaded (`GET /v1/feed`, newest first, page by page,
   * up to `historyLimit` items) before connecting, on a reconnect of a client that never
   * had a last id, and after a `reset`; called once per page with the items not shown yet.
   */
  onHistory?: (items: FeedEvent[]) => void;
  /** At most this many history items per load; default 200 (0: no history). */
  historyLimit?: number;
  /** A `reset` frame arrived (see ResetInfo); the history reload follows by itself. */
  onReset?: (info: ResetInfo) => void;
  onStatus?: (status: Status, info: { detail: string; role: Role }) => void;
  /**
   * Reconnect backoff, "full jitter" (as centrifuge-js and Socket.IO): attempt n (from 0)
   * waits a uniformly random time in [0, min(backoffMaxMs, backoffBaseMs * 2^n)].
   * Defaults: 500 ms and 20000 ms. The attempt count goes back to 0 on every `hello`.
   * No wait at all: after close 4003 (token expired), SSE's `expired` frame, and the
   * browser's `online` event (which also cancels a pending wait).
   */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /**
   * After a refusal by a connection limit (close 4029 LIMITED, on a gateway with that
   * code) the wait is seconds, not a fraction of one: "equal jitter" on the step
   * s = min(backoffMaxMs, max(limitedMs, backoffBaseMs * 2^n)), a random time in
   * [s/2, s]. Default 5000 ms.
   */
  limitedMs?: number;
  /**
   * Watchdog: a connection that received nothing (the server sends `{"type":"ping"}` every
   * LIVEFEED_KEEPALIVE seconds, 15 by default, on an idle WebSocket and on every SSE
   * stream) for this long is taken as dead: closed and reconnected with the last id.
   * Default 40000 ms (about 2.5x the keepalive; raise it with LIVEFEED_KEEPALIVE).
   * 0: no watchdog.
   */
  watchdogMs?: number;
}

/** A running feed (what `connect()` returns). */
export declare class LiveFeed {
  constructor(options: Options);
  /** Starts it (`connect()` does). */
  start(): Promise<void>;
  /** Stops for good: closes the connection; a leader hands over to another tab. */
  close(): void;
  /** The resume point: the feed id of the last event seen (or of `hello`/`reset`). */
  readonly lastId: string | null;
  /** The current status. */
  readonly state: Status;
  readonly role: Role;
}

/** Start a feed: history first (with `onHistory`), then live events. */
export declare function connect(options: Options): LiveFeed;

/** The delay before reconnect attempt `attempt` (see `backoffBaseMs`). */
export declare function backoffDelay(attempt: number, baseMs?: number, maxMs?: number): number;

export declare const DEFAULTS: Readonly<Required<Pick<Options,
  "transport" | "share" | "remember" | "historyLimit" | "backoffBaseMs" | "backoffMaxMs" |
  "limitedMs" | "watchdogMs">>>;

/**
 * WebSocket close codes of the gateway (schemas/frames.py CloseCode) and what the client
 * does on each:
 * - 4001 BAD_TOKEN: bad, missing or late token: asks `getToken()` for another and retries
 *   with backoff; the same token again => status `unauthorized`, stopped. (Over SSE: the
 *   ticket request answered 401.)
 * - 4003 TOKEN_EXPIRED: the token's `exp` passed on the open connection (no `refresh` in
 *   time): asks `getToken()` and reconnects at once with its last id (exact resume); the
 *   same over SSE on the final `expired` frame. A second expiry before any `hello` waits
 *   the backoff.
 * - 4008 TOO_SLOW: it did not keep up: reconnects with backoff, the server replays.
 * - 1012 DRAINING: the gateway shuts down: reconnects with backoff (to another gateway).
 * - 4029 LIMITED (a gateway with connection limits): waits `limitedMs`-based equal
 *   jitter (seconds), then reconnects, resuming.
 * - any other code (1006: the connection broke; 1008/1009 inbound limits): reconnects with
 *   backoff, resuming.
 */
export declare const CLOSE: {
  readonly BAD_TOKEN: 4001;
  readonly TOKEN_EXPIRED: 4003;
  readonly TOO_SLOW: 4008;
  readonly DRAINING: 1012;
  readonly LIMITED: 4029;
};

/** The frame types the gateway sends (schemas/frames.py FrameType). */
export declare const FRAME_TYPES: readonly ["hello", "event", "recovered", "reset", "ping", "expired"];
