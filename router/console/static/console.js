// shoal console: a read-only single page over the gateway's /console/api/ views.
// Plain DOM, no framework and no build step. Every value from the cluster is put in the
// page as text (never as HTML), and nothing is loaded from another origin.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "shoal-console-token";
const state = { token: sessionStorage.getItem(TOKEN_KEY), timer: null, page: null, seq: 0 };

// --- DOM helpers -------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.setAttribute("class", value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

function fill(el, ...children) {
  el.replaceChildren();
  appendAll(el, children);
  return el;
}

// --- formatting --------------------------------------------------------------------

const fmtInt = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
const fmtRate = (n) => (n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(1));

function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
}

const fmtTime = (ms) => new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");

// --- API ---------------------------------------------------------------------------

class AuthNeeded extends Error {}

async function api(path) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const resp = await fetch("api/" + path, { headers, cache: "no-store" });
  const body = await resp.json().catch(() => ({ detail: resp.statusText }));
  if (resp.status === 401) throw new AuthNeeded(body.detail);
  if (!resp.ok) throw new Error((body.code ? body.code + ": " : "") + (body.detail || resp.statusText));
  return body;
}

function banner(message) {
  const el = document.getElementById("banner");
  el.hidden = !message;
  el.textContent = message || "";
}

function showLogin(message) {
  stopRefresh();
  state.page = null;
  document.getElementById("main").replaceChildren();
  document.getElementById("login").hidden = false;
  const error = document.getElementById("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  document.getElementById("token").focus();
}

// --- routing and live refresh ---------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || "") };
}

function stopRefresh() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
  state.seq++;  // a refresh still in flight schedules no next one
}

// Runs page.refresh() now and every REFRESH_MS while the same page is shown.
function restart(page) {
  stopRefresh();
  tick(page, state.seq);
}

async function tick(page, seq) {
  if (state.page !== page || state.seq !== seq) return;
  try {
    await page.refresh();
    banner(null);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString("en-GB");
  } catch (err) {
    if (err instanceof AuthNeeded) { showLogin("The token was not accepted: " + err.message); return; }
    banner(err.message);
  }
  if (state.page === page && state.seq === seq) state.timer = setTimeout(() => tick(page, seq), REFRESH_MS);
}

function route() {
  stopRefresh();
  const { parts, params } = parseHash();
  const section = parts[0] || "overview";
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === section);
  const main = document.getElementById("main");
  let page;
  if (section === "topics" && parts[1]) page = topicPage(main, parts[1], params);
  else if (section === "topics") page = listPage(main, "topics", params, topicsTable);
  else if (section === "groups" && parts[1]) page = groupPage(main, parts[1]);
  else if (section === "groups") page = listPage(main, "groups", params, groupsTable);
  else if (section === "brokers") page = brokersPage(main);
  else page = overviewPage(main);
  state.page = page;
  restart(page);
}

// --- shared pieces -------------------------------------------------------------------

function table(name, columns, rows, key) {
  return h("table", { "data-table": name },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.title)))),
    h("tbody", {}, rows.map((row) => h("tr", { "data-key": key(row), class: row._class || null },
      columns.map((c) => h("td", { class: c.num ? "num" : null, "data-col": c.id }, c.cell(row)))))));
}

function card(label, value, id, cls) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label),
    h("div", { class: "value " + (cls || ""), "data-stat": id }, value));
}

function pager(found, go) {
  const last = Math.min(found.offset + found.limit, found.total);
  return h("span", { class: "pager" },
    h("span", { "data-pager": "" }, found.total ? `${fmtInt(found.offset + 1)}–${fmtInt(last)} of ${fmtInt(found.total)}` : "none"),
    h("button", { type: "button", disabled: found.offset === 0, onclick: () => go(Math.max(0, found.offset - found.limit)) }, "‹ prev"),
    h("button", { type: "button", disabled: last >= found.total, onclick: () => go(found.offset + found.limit) }, "next ›"));
}

function link(href, text) { return h("a", { href }, text); }
const topicHref = (name) => "#/topics/" + encodeURIComponent(name);
const groupHref = (name) => "#/groups/" + encodeURIComponent(name);

// A line chart of series drawn from history points, scaled to the largest value shown.
function chart(title, history, series) {
  const w = 420, hgt = 110, pad = 4;
  const values = history.flatMap((p) => series.map((s) => p[s.key]));
  const top = Math.max(1, ...values);
  const t0 = history.length ? history[0].t : 0;
  const span = history.length > 1 ? history[history.length - 1].t - t0 : 1;
  const lines = series.map((s, i) => svg("polyline", {
    class: "s" + i, "data-series": s.key,
    points: history.map((p) => [
      (pad + ((p.t - t0) / span) * (w - 2 * pad)).toFixed(1),
      (hgt - pad - (p[s.key] / top) * (hgt - 2 * pad)).toFixed(1),
    ].join(",")).join(" "),
  }));
  return h("div", { class: "chart" },
    h("div", { class: "title" }, title, " ", series.map((s, i) => h("span", { class: "legend" + i }, "■ " + s.label + " ")),
      h("span", { class: "muted" }, "max " + fmtRate(top))),
    svg("svg", { width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, role: "img" },
      svg("line", { x1: 0, y1: hgt - pad, x2: w, y2: hgt - pad, stroke: "#dde2ea" }), lines));
}

// --- overview --------------------------------------------------------------------------

function overviewPage(main) {
  fill(main, h("h1", {}, "Overview"));
  const body = main.appendChild(h("div"));
  return {
    async refresh() {
      const o = await api("overview");
      showIdentity(o);
      const up = o.brokers.filter((b) => b.up).length;
      fill(body,
        h("div", { class: "cards" },
          card("Cluster", o.cluster, "cluster"),
          card("Epoch", fmtInt(o.epoch), "epoch"),
          card("Brokers up", `${up} / ${o.brokers.length}`, "brokers-up", up < o.brokers.length ? "bad" : "good"),
          card("Topics", fmtInt(o.topics), "topics"),
          card("Partitions", fmtInt(o.partitions), "partitions"),
          card("Under-replicated", fmtInt(o.under_replicated), "under-replicated", o.under_replicated ? "warn" : null),
          card("Offline", fmtInt(o.offline), "offline", o.offline ? "bad" : null),
          card("Records/s in", fmtRate(o.rates.records_in_per_s), "records-in"),
          card("Bytes/s in", fmtBytes(Math.round(o.rates.bytes_in_per_s)), "bytes-in"),
          card("Bytes/s out", fmtBytes(Math.round(o.rates.bytes_out_per_s)), "bytes-out")),
        h("h2", {}, "Throughput"),
        h("div", { class: "charts" },
          chart("records/s", o.history, [{ key: "records_in_per_s", label: "in" }]),
          chart("bytes/s", o.history, [{ key: "bytes_in_per_s", label: "in" }, { key: "bytes_out_per_s", label: "out" }])),
        h("h2", {}, "Brokers"),
        table("brokers", [
          { id: "id", title: "Broker", cell: (b) => String(b.id) },
          { id: "url", title: "URL", cell: (b) => b.url },
          { id: "health", title: "Health", cell: health },
          { id: "leader_of", title: "Partitions led", num: true, cell: (b) => fmtInt(b.leader_of) },
        ], o.brokers.map((b) => ({ ...b, _class: b.up ? null : "down" })), (b) => b.id),
        h("p", { class: "muted" }, "shoal " + (o.version || "")));
    },
  };
}

function showIdentity(o) {
  document.getElementById("cluster").textContent = `${o.cluster} · epoch ${o.epoch}`;
  document.getElementById("principal").textContent = o.principal ? "as " + o.principal : "";
}

function health(b) {
  return b.up ? h("span", { class: "pill good" }, "up") : h("span", {}, h("span", { class: "pill bad" }, "down"), " ", h("span", { class: "muted" }, b.error || ""));
}

// --- topic and group lists --------------------------------------------------------------

function listPage(main, kind, params, render) {
  let query = params.get("q") || "";
  let offset = Number(params.get("offset") || 0);
  const search = h("input", { type: "search", placeholder: `search ${kind}`, value: query, "aria-label": "search" });
  const tools = h("span");
  const body = h("div");
  const page = {
    async refresh() {
      const found = await api(`${kind}?q=${encodeURIComponent(query)}&offset=${offset}&limit=50`);
      fill(tools, pager(found, (o) => { offset = o; keep(); }));
      fill(body, found.missing_brokers && Object.keys(found.missing_brokers).length
        ? h("p", { class: "warn" }, "Brokers that did not answer (their committed offsets are missing): " + Object.keys(found.missing_brokers).join(", "))
        : null, render(found.items));
    },
  };
  // The address keeps the search and page, so a reload or a shared link shows the same list.
  const keep = () => {
    history.replaceState(null, "", `#/${kind}?q=${encodeURIComponent(query)}&offset=${offset}`);
    restart(page);
  };
  let debounce = null;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { query = search.value; offset = 0; keep(); }, 250);
  });
  fill(main, h("h1", {}, kind === "topics" ? "Topics" : "Groups"), h("div", { class: "toolbar" }, search, tools), body);
  return page;
}

function topicsTable(items) {
  return table("topics", [
    { id: "name", title: "Topic", cell: (t) => link(topicHref(t.name), t.name) },
    { id: "partitions", title: "Partitions", num: true, cell: (t) => fmtInt(t.partitions) },
    { id: "replication", title: "Replication", num: true, cell: (t) => fmtInt(t.replication) },
    { id: "records", title: "Records", num: true, cell: (t) => fmtInt(t.records) },
    { id: "size", title: "Size", num: true, cell: (t) => fmtBytes(t.size_bytes) },
    { id: "records_in", title: "Records/s in", num: true, cell: (t) => fmtRate(t.records_in_per_s) },
    { id: "bytes_out", title: "Bytes/s out", num: true, cell: (t) => fmtBytes(Math.round(t.bytes_out_per_s)) },
    { id: "under_replicated", title: "Under-repl.", num: true, cell: (t) => fmtInt(t.under_replicated) },
    { id: "offline", title: "Offline", num: true, cell: (t) => fmtInt(t.offline) },
  ], items.map((t) => ({ ...t, _class: t.offline ? "down" : null })), (t) => t.name);
}

function groupsTable(items) {
  return table("groups", [
    { id: "group", title: "Group", cell: (g) => link(groupHref(g.group), g.group) },
    { id: "state", title: "State", cell: (g) => g.state || "—" },
    { id: "members", title: "Members", num: true, cell: (g) => fmtInt(g.members) },
    { id: "topics", title: "Topics", cell: (g) => g.topics.join(", ") },
    { id: "partitions", title: "Partitions", num: true, cell: (g) => fmtInt(g.partitions) },
    { id: "lag", title: "Lag", num: true, cell: (g) => fmtInt(g.lag) },
    { id: "coordinator", title: "Coordinator", num: true, cell: (g) => String(g.coordinator) },
  ], items, (g) => g.group);
}

// --- one topic: partitions and the record browser ----------------------------------------

function topicPage(main, name, params) {
  let offset = Number(params.get("offset") || 0);
  const summary = h("div");
  const tools = h("span");
  const parts = h("div");
  const browser = recordBrowser(name);
  fill(main, h("h1", {}, "Topic ", h("code", {}, name)), summary,
    h("h2", {}, "Partitions"), h("div", { class: "toolbar" }, tools), parts,
    h("h2", {}, "Records"), browser.element);
  const page = {
    async refresh() {
      const t = await api(`topics/${encodeURIComponent(name)}?offset=${offset}&limit=100`);
      browser.setPartitions(t.partitions);
      fill(summary, h("div", { class: "cards" },
        card("Partitions", fmtInt(t.partitions), "partitions"),
        card("Replication", fmtInt(t.replication), "replication"),
        card("Records", fmtInt(t.records), "records"),
        card("Size", fmtBytes(t.size_bytes), "size"),
        card("Records/s in", fmtRate(t.records_in_per_s), "records-in"),
        card("Under-replicated", fmtInt(t.under_replicated), "under-replicated", t.under_replicated ? "warn" : null),
        card("Offline", fmtInt(t.offline), "offline", t.offline ? "bad" : null)),
      h("h2", {}, "Config"),
      h("dl", { class: "kv" }, Object.entries(t.config).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v === null ? "none" : String(v))])));
      fill(tools, pager(t.page, (o) => { offset = o; restart(page); }));
      fill(parts, table("partitions", [
        { id: "partition", title: "Partition", num: true, cell: (p) => String(p.partition) },
        { id: "leader", title: "Leader", num: true, cell: (p) => p.leader === null ? "none" : String(p.leader) },
        { id: "leader_epoch", title: "Leader epoch", num: true, cell: (p) => fmtInt(p.leader_epoch) },
        { id: "replicas", title: "Replicas", cell: (p) => p.replicas.join(", ") },
        { id: "isr", title: "ISR", cell: (p) => p.isr.join(", ") },
        { id: "high_watermark", title: "High watermark", num: true, cell: (p) => fmtInt(p.high_watermark) },
        { id: "log_start_offset", title: "Log start", num: true, cell: (p) => fmtInt(p.log_start_offset) },
        { id: "size", title: "Size", num: true, cell: (p) => fmtBytes(p.size_bytes) },
      ], t.page.items.map((p) => ({ ...p, _class: p.leader_up ? null : "down" })), (p) => p.partition));
    },
  };
  return page;
}

function recordBrowser(topic) {
  const partition = h("input", { type: "number", min: 0, value: 0, name: "partition", "aria-label": "partition" });
  const mode = h("select", { name: "mode", "aria-label": "mode" },
    h("option", { value: "newest" }, "newest"), h("option", { value: "offset" }, "from offset"),
    h("option", { value: "timestamp" }, "from time"));
  const count = h("input", { type: "number", min: 1, max: 500, value: 20, name: "count", "aria-label": "count" });
  const from = h("input", { type: "text", name: "from", placeholder: "offset, or time as 2026-01-31T12:00:00Z", size: 34, "aria-label": "from" });
  const format = h("select", { name: "format", "aria-label": "format" },
    ["auto", "text", "json", "hex"].map((f) => h("option", { value: f }, f)));
  const status = h("span", { class: "muted", "data-browse-status": "" });
  const out = h("div");
  let last = null;
  const form = h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); load(); } },
    "partition", partition, mode, "count", count, from, "show as", format, h("button", { type: "submit" }, "Browse"), status);
  format.addEventListener("change", () => last && render(last));

  async function load() {
    let query = `mode=${mode.value}&count=${Number(count.value) || 20}`;
    if (mode.value === "offset") query += `&offset=${Number(from.value) || 0}`;
    if (mode.value === "timestamp") {
      const ms = Date.parse(from.value);
      if (Number.isNaN(ms)) { status.textContent = "give the time as 2026-01-31T12:00:00Z"; return; }
      query += `&timestamp=${ms}`;
    }
    status.textContent = "reading…";
    try {
      last = await api(`topics/${encodeURIComponent(topic)}/partitions/${Number(partition.value) || 0}/records?${query}`);
      render(last);
    } catch (err) {
      if (err instanceof AuthNeeded) { showLogin(err.message); return; }
      status.textContent = err.message;
    }
  }

  function render(result) {
    const stop = result.limited_by ? `, stopped by the ${result.limited_by} limit` : "";
    status.textContent = `${result.records.length} records from offset ${result.first_offset} ` +
      `(log ${result.log_start_offset}–${result.high_watermark})${stop}`;
    fill(out, table("records", [
      { id: "offset", title: "Offset", num: true, cell: (r) => String(r.offset) },
      { id: "timestamp", title: "Timestamp", cell: (r) => fmtTime(r.timestamp) },
      { id: "key", title: "Key", cell: (r) => showBytes(r, "key", format.value) },
      { id: "value", title: "Value", cell: (r) => showBytes(r, "value", format.value) },
      { id: "headers", title: "Headers", cell: (r) => h("dl", { class: "kv" }, Object.entries(r.headers || {}).map(([k, v]) =>
        [h("dt", {}, k), h("dd", {}, typeof v === "string" ? v : "base64:" + v.b64)])) },
    ], result.records, (r) => r.offset));
  }

  return {
    element: h("div", {}, form, out),
    setPartitions(n) { partition.max = n - 1; },
  };
}

function bytesOf(record, name) {
  if (typeof record[name] === "string") return { bytes: new TextEncoder().encode(record[name]), text: record[name] };
  if (typeof record[name + "_b64"] === "string") {
    const raw = atob(record[name + "_b64"]);
    return { bytes: Uint8Array.from(raw, (c) => c.charCodeAt(0)), text: null };
  }
  return null;
}

function hex(bytes) {
  const out = [];
  for (let i = 0; i < bytes.length; i += 16) {
    out.push(Array.from(bytes.slice(i, i + 16), (b) => b.toString(16).padStart(2, "0")).join(" "));
  }
  return out.join("\n");
}

// One key or value as text, pretty JSON or hex; "auto" picks JSON when it parses, hex for binary.
function showBytes(record, name, format) {
  const data = bytesOf(record, name);
  if (data === null) return h("span", { class: "muted" }, "null");
  let shown = null;
  let note = "";
  if (format === "hex" || (data.text === null && format !== "text")) shown = hex(data.bytes);
  else if (format === "text") shown = data.text === null ? new TextDecoder().decode(data.bytes) : data.text;
  else {
    try {
      const parsed = JSON.parse(data.text);
      shown = typeof parsed === "object" && parsed !== null ? JSON.stringify(parsed, null, 2) : null;
    } catch (err) {
      if (format === "json") note = "not JSON: ";
    }
    if (shown === null) shown = data.text;
  }
  return h("pre", { class: "value" }, note ? h("span", { class: "muted" }, note) : null, shown);
}

// --- one group ---------------------------------------------------------------------------

function groupPage(main, name) {
  const body = h("div");
  fill(main, h("h1", {}, "Group ", h("code", {}, name)), body);
  return {
    async refresh() {
      const g = await api(`groups/${encodeURIComponent(name)}`);
      fill(body,
        g.error ? h("p", { class: "warn" }, "coordinator: " + g.error) : null,
        h("div", { class: "cards" },
          card("State", g.state || "—", "state"),
          card("Members", fmtInt(g.members), "members"),
          card("Generation", fmtInt(g.generation), "generation"),
          card("Coordinator", String(g.coordinator), "coordinator"),
          card("Total lag", fmtInt(g.lag), "lag")),
        h("h2", {}, "Members"),
        table("members", [
          { id: "member", title: "Member", cell: (m) => m.member_id },
          { id: "instance", title: "Instance", cell: (m) => m.group_instance_id || "—" },
          { id: "topics", title: "Subscribed", cell: (m) => m.topics.join(", ") },
          { id: "assignment", title: "Assignment", cell: (m) => Object.entries(m.assignment || {}).map(([t, ps]) => `${t}: ${ps.join(",")}`).join("; ") || "—" },
          { id: "heartbeat", title: "Last heartbeat", num: true, cell: (m) => fmtInt(m.last_heartbeat_ms_ago) + " ms ago" },
        ], g.member_list, (m) => m.member_id),
        h("h2", {}, "Lag per partition"),
        table("lag", [
          { id: "topic", title: "Topic", cell: (r) => link(topicHref(r.topic), r.topic) },
          { id: "partition", title: "Partition", num: true, cell: (r) => String(r.partition) },
          { id: "offset", title: "Committed", num: true, cell: (r) => fmtInt(r.offset) },
          { id: "log_start_offset", title: "Log start", num: true, cell: (r) => fmtInt(r.log_start_offset) },
          { id: "high_watermark", title: "High watermark", num: true, cell: (r) => fmtInt(r.high_watermark) },
          { id: "lag", title: "Lag", num: true, cell: (r) => fmtInt(r.lag) },
          { id: "member", title: "Held by", cell: (r) => r.member || "—" },
        ], g.lag_rows, (r) => `${r.topic}/${r.partition}`));
    },
  };
}

// --- brokers -------------------------------------------------------------------------------

function brokersPage(main) {
  const body = h("div");
  fill(main, h("h1", {}, "Brokers"), body);
  return {
    async refresh() {
      const b = await api("brokers");
      fill(body, table("brokers", [
        { id: "id", title: "Broker", num: true, cell: (r) => String(r.id) },
        { id: "url", title: "URL", cell: (r) => r.url },
        { id: "health", title: "Health", cell: health },
        { id: "epoch", title: "Epoch", num: true, cell: (r) => fmtInt(r.epoch) },
        { id: "version", title: "Version", cell: (r) => r.version || "—" },
        { id: "leader_of", title: "Leader of", num: true, cell: (r) => fmtInt(r.leader_of) },
        { id: "replica_of", title: "Replica of", num: true, cell: (r) => fmtInt(r.replica_of) },
        { id: "disk", title: "Disk used", num: true, cell: (r) => fmtBytes(r.disk_bytes) },
        { id: "links", title: "Links", cell: (r) => [h("a", { href: r.metrics_url, rel: "noreferrer" }, "metrics"), " ", h("a", { href: r.health_url, rel: "noreferrer" }, "health")] },
      ], b.brokers.map((r) => ({ ...r, _class: r.up ? null : "down" })), (r) => r.id));
    },
  };
}

// --- start -------------------------------------------------------------------------------

async function start() {
  document.getElementById("login").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = document.getElementById("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    document.getElementById("login").hidden = true;
    document.getElementById("forget").hidden = false;
    opened();
  });
  document.getElementById("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    document.getElementById("principal").textContent = "";
    showLogin(null);
  });
  window.addEventListener("hashchange", route);
  const session = await api("session");
  if (session.auth && !state.token) { showLogin(null); return; }
  document.getElementById("forget").hidden = !session.auth;
  opened();
}

// The header names the cluster and the principal on every page; the list pages refresh the rest.
function opened() {
  route();
  api("overview").then(showIdentity).catch(() => {});  // a refused token is shown by the page itself
}

start().catch((err) => banner(err.message));
