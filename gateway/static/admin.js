// The /admin page: polls /admin/api every 2 s, with the token from the page's fragment
// (#token=, never sent to a server; ?token= still read for old links) as a bearer header.
// Everything from Redis (errors, previews, names) goes in via textContent, never as HTML.
"use strict";

const TOKEN = new URLSearchParams(location.hash.slice(1)).get("token")
  || new URLSearchParams(location.search).get("token") || "";
const POLL_MS = 2000;

function api(path, options = {}) {
  const headers = { authorization: `Bearer ${TOKEN}`, ...(options.headers || {}) };
  return fetch(`/admin/api/${path}`, { ...options, headers }).then(async (r) => {
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(`${r.status}: ${body.error || r.statusText}`);
    return body;
  });
}

function post(path, body) {
  return api(path, { method: "POST", body: JSON.stringify(body),
                     headers: { "content-type": "application/json" } });
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function ms(v) {
  if (v === null || v === undefined) return "-";
  if (v < 1000) return `${v}ms`;
  const s = v / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  return h < 24 ? `${h}h${String(m % 60).padStart(2, "0")}m` : `${Math.floor(h / 24)}d${h % 24}h`;
}

function table(headers, rows, empty) {
  if (!rows.length) return el("div", { class: "empty" }, empty);
  const head = el("tr", {}, ...headers.map(([label, cls]) =>
    el("th", { class: cls === "num" ? "num" : "" }, label)));
  const body = rows.map((row) => el("tr", {}, ...row.map((cell, i) => {
    const cls = headers[i][1] || "";
    return cell instanceof Node ? el("td", { class: cls }, cell) : el("td", { class: cls }, cell);
  })));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function put(id, node) {
  document.getElementById(id).replaceChildren(node);
}

function notice(text, kind) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.className = kind;
}

function lagCell(g) {
  const text = g.lag === null ? "?" : `${g.lag}${g.lag_exact ? "" : "+"}`;
  return el("span", { class: g.lag > 0 ? "warn" : "" }, text);
}

async function claim(group) {
  const minIdle = document.getElementById("min-idle").value.trim() || "60s";
  const to = document.getElementById("claim-to").value.trim() || null;
  try {
    const dry = await post("claim", { group, min_idle: minIdle, to, dry_run: true });
    if (!dry.entries.length) { notice(`nothing in ${group} idle for ${minIdle}`, "ok"); return; }
    const owners = [...new Set(dry.entries.map((e) => e.consumer))].join(", ");
    if (!window.confirm(`Move ${dry.entries.length} entries of group ${group} idle for ` +
                        `${minIdle} or more from ${owners} to ${dry.to}?`)) return;
    const done = await post("claim", { group, min_idle: minIdle, to: dry.to });
    notice(`moved ${done.entries.length} entries of ${group} to ${done.to}`, "ok");
  } catch (e) { notice(`claim failed: ${e.message}`, "bad"); }
  refresh();
}

async function deadAction(action, body, question) {
  if (!window.confirm(question)) return;
  try {
    const results = await post(`dead/${action}`, body);
    const done = results.filter((r) => r.outcome === (action === "retry" ? "retried" : "dropped"));
    notice(`${done.length} of ${results.length} ${action === "retry" ? "retried" : "dropped"}`,
           done.length === results.length ? "ok" : "bad");
  } catch (e) { notice(`${action} failed: ${e.message}`, "bad"); }
  refresh();
}

function renderStatus(s) {
  put("groups", table(
    [["group"], ["consumers", "num"], ["pending", "num"], ["lag", "num"],
     ["oldest pending age", "num"], ["idle since delivery", "num"], ["last delivered", "id"],
     [""]],
    s.groups.map((g) => [g.name, g.consumers.length, g.pending, lagCell(g),
                         ms(g.oldest_pending_age_ms), ms(g.oldest_pending_idle_ms),
                         g.last_delivered_id,
                         el("button", { onclick: () => claim(g.name), "data-group": g.name },
                            "Claim stale")]),
    "No consumer groups yet (start `livefeed consumer persist|fanout`)."));
  const consumers = s.groups.flatMap((g) => g.consumers.map((c) => [g.name, c.name,
    c.pending, ms(c.idle_ms)]));
  put("consumers", table([["group"], ["consumer"], ["pending", "num"], ["idle", "num"]],
                         consumers, "No consumers."));
  const streams = [...s.streams, ...s.feeds];
  put("streams", el("div", {}, table(
    [["stream"], ["key", "id"], ["length", "num"], ["first id", "id"], ["last id", "id"]],
    streams.map((x) => [x.name, x.key, x.length, x.first_id || "-", x.last_id || "-"]), ""),
    s.feeds_more ? el("div", { class: "empty" }, "(a sample of the feed streams)") : ""));
}

function renderPending(p) {
  document.getElementById("pending-count").textContent =
    `${p.entries.length} shown of ${p.total}`;
  put("pending", table(
    [["group"], ["id", "id"], ["consumer"], ["idle", "num"], ["deliveries", "num"], ["user"],
     ["preview", "wrap"]],
    p.entries.map((e) => [e.group, e.id, e.consumer, ms(e.idle_ms), e.deliveries,
                          e.user || "-", e.gone ? "(entry deleted)" : e.preview || ""]),
    "Nothing pending."));
}

function renderDead(d) {
  document.getElementById("retry-all").disabled = !d.total;
  put("dead", table(
    [["id", "id"], ["group"], ["error", "err"], ["deliveries", "num"], ["failed at"], ["user"],
     ["preview", "wrap"], [""]],
    d.letters.map((x) => [x.id, x.group, x.error, x.deliveries,
      new Date(x.failed_at_ms).toISOString().replace("T", " ").slice(0, 19), x.user || "-",
      x.preview || "",
      el("span", {},
         el("button", { onclick: () => deadAction("retry", { ids: [x.id] },
                        `Put dead letter ${x.id} back into the ingest stream?`) }, "Retry"),
         " ",
         el("button", { class: "danger", onclick: () => deadAction("drop", { ids: [x.id] },
                        `Delete dead letter ${x.id} for good?`) }, "Drop"))]),
    "No dead letters."));
}

function renderGateway(g) {
  const cards = Object.entries(g.clients).map(([t, n]) =>
    el("div", { class: "card" }, el("div", { class: "v" }, n), el("div", { class: "k" },
       `${t} clients`)));
  const hubClass = g.hub === "healthy" ? "okc" : g.hub === "absent" ? "" : "bad";
  cards.push(el("div", { class: "card" }, el("div", { class: `v ${hubClass}` }, g.hub),
                el("div", { class: "k" }, "pub/sub link")));
  if (g.users !== null && g.users !== undefined) {
    cards.push(el("div", { class: "card" }, el("div", { class: "v" }, g.users),
                  el("div", { class: "k" }, "live users")));
  }
  put("gateway", el("div", { class: "cards" }, ...cards));
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const [status, pending, dead, gateway] = await Promise.all([
      api("status"), api("pending?limit=50"), api("dead?limit=50"), api("gateway")]);
    renderStatus(status);
    renderPending(pending);
    renderDead(dead);
    renderGateway(gateway);
    document.getElementById("updated").textContent =
      `Redis ${status.redis_version} · updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "1";
  } catch (e) {
    document.getElementById("updated").textContent = `cannot load: ${e.message}`;
  } finally {
    busy = false;
  }
}

document.getElementById("retry-all").addEventListener("click", () =>
  deadAction("retry", { all: true }, "Put every dead letter back into the ingest stream?"));
refresh();
setInterval(refresh, POLL_MS);
