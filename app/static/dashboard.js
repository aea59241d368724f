// lockstep dashboard: lists, live updates over one event stream, figures from /metrics.
"use strict";

const LIST_LIMIT = 50;          // per list; the stream watches at most 2 x 50 resources
const REFRESH_MS = 5000;        // re-list to pick up resources created elsewhere
const METRICS_MS = 2000;

const $ = (id) => document.getElementById(id);
const counters = new Map();     // name -> value
const items = new Map();        // id -> {value, version}
let stream = null;
let streamKey = "";
let previous = null;            // last /metrics sample, for rates

function say(text) { $("status").textContent = text; }

function headers(extra = {}) {
  const h = { "Accept": "application/json", ...extra };
  const token = $("token").value.trim();
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function call(method, path, body, extra = {}) {
  const init = { method, headers: headers(extra) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = extra["Content-Type"] || "application/json";
  }
  const r = await fetch(path, init);
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && (data.detail || data.title)) || r.statusText);
  return data;
}

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  return td;
}

function flash(el) {
  el.classList.remove("flash");
  void el.offsetWidth;   // restart the animation
  el.classList.add("flash");
}

function renderCounters() {
  const body = $("counters");
  body.replaceChildren();
  for (const [name, value] of [...counters].sort((a, b) => a[0] < b[0] ? -1 : 1)) {
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    tr.append(cell(name), cell(String(value), "num"));
    const td = document.createElement("td");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = "+1";
    b.setAttribute("aria-label", "Increment " + name);
    b.addEventListener("click", () => increment(name));
    td.append(b);
    tr.append(td);
    body.append(tr);
  }
  $("counters-empty").hidden = counters.size > 0;
}

function renderItems() {
  const body = $("items");
  body.replaceChildren();
  for (const [id, rec] of [...items].sort((a, b) => a[0] < b[0] ? -1 : 1)) {
    const tr = document.createElement("tr");
    tr.dataset.id = id;
    const value = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = JSON.stringify(rec.value);
    value.append(code);
    tr.append(cell(id), cell(String(rec.version), "num"), value);
    const td = document.createElement("td");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = "Edit";
    b.setAttribute("aria-label", "Edit " + id);
    b.addEventListener("click", () => edit(id));
    td.append(b);
    tr.append(td);
    body.append(tr);
  }
  $("items-empty").hidden = items.size > 0;
}

function showCounter(name, value) {
  if (value === null) counters.delete(name); else counters.set(name, value);
  const row = document.querySelector(`#counters tr[data-name="${CSS.escape(name)}"]`);
  if (row && value !== null) {
    row.children[1].textContent = String(value);
    flash(row.children[1]);
  } else {
    renderCounters();
  }
}

function showItem(state) {
  if (state.version === null) items.delete(state.id);
  else items.set(state.id, { value: state.value, version: state.version });
  renderItems();
  const row = document.querySelector(`#items tr[data-id="${CSS.escape(state.id)}"]`);
  if (row) flash(row);
}

function watch() {
  const params = new URLSearchParams();
  for (const name of counters.keys()) params.append("counter", name);
  for (const id of items.keys()) params.append("item", id);
  const key = params.toString();
  if (key === streamKey && stream && stream.readyState !== EventSource.CLOSED) return;
  if (stream) stream.close();
  stream = null;
  streamKey = key;
  if (!key) return;
  stream = new EventSource("/events?" + key);
  stream.addEventListener("counter", (e) => { const s = JSON.parse(e.data); showCounter(s.name, s.value); });
  stream.addEventListener("item", (e) => showItem(JSON.parse(e.data)));
  stream.addEventListener("open", () => say("Live: watching " + (counters.size + items.size) + " resources."));
  stream.addEventListener("error", () => say("Stream interrupted; reconnecting…"));
}

async function refresh() {
  try {
    const [c, i] = await Promise.all([
      call("GET", `/counters?limit=${LIST_LIMIT}`),
      call("GET", `/items?limit=${LIST_LIMIT}`),
    ]);
    counters.clear();
    for (const row of c.items) counters.set(row.name, row.value);
    items.clear();
    for (const row of i.items) items.set(row.id, { value: row.value, version: row.version });
    renderCounters();
    renderItems();
    watch();
  } catch (err) {
    say("Could not list resources: " + err.message);
  }
}

async function increment(name) {
  try {
    const r = await call("POST", `/counters/${encodeURIComponent(name)}/increment`);
    showCounter(r.name, r.value);
    say(`Counter ${r.name} is now ${r.value}.`);
    if (!streamKey.includes("counter=" + encodeURIComponent(name))) watch();
  } catch (err) {
    say(`Increment of ${name} failed: ${err.message}`);
  }
}

function edit(id) {
  const rec = items.get(id);
  $("edit-id").value = id;
  $("edit-value").value = JSON.stringify(rec ? rec.value : null, null, 2);
  $("edit-version").value = rec ? String(rec.version) : "";
  $("edit-value").focus();
}

async function save(event) {
  event.preventDefault();
  const id = $("edit-id").value.trim();
  let value;
  try {
    value = JSON.parse($("edit-value").value);
  } catch (err) {
    say("The value is not valid JSON: " + err.message);
    $("edit-value").focus();
    return;
  }
  const version = $("edit-version").value;
  const extra = version && $("edit-id").value === id && items.has(id) ? { "If-Match": `"${version}"` } : {};
  try {
    const r = await call("PUT", `/items/${encodeURIComponent(id)}`, { value }, extra);
    items.set(r.id, { value: r.value, version: r.version });
    renderItems();
    watch();
    $("edit-version").value = String(r.version);
    say(`Record ${r.id} saved, version ${r.version}.`);
  } catch (err) {
    say(`Saving ${id} failed: ${err.message}`);
  }
}

// Prometheus text format: sum every sample of a metric name, optionally filtered by a label.
function parseMetrics(text) {
  const sums = new Map();
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    let key = m[1];
    if (m[2] && m[2].includes('le="0.0001"')) key += "{fast}";
    sums.set(key, (sums.get(key) || 0) + Number(m[3]));
  }
  return sums;
}

async function figures() {
  try {
    const r = await fetch("/metrics", { headers: headers() });
    if (!r.ok) throw new Error(r.statusText);
    const now = parseMetrics(await r.text());
    const t = performance.now();
    const get = (k) => now.get(k) || 0;
    if (previous) {
      const dt = (t - previous.t) / 1000;
      const d = (k) => Math.max(0, get(k) - (previous.m.get(k) || 0));
      $("fig-rps").textContent = (d("lockstep_http_requests_total") / dt).toFixed(1);
      const waits = d("lockstep_lock_wait_seconds_count");
      const zero = d("lockstep_lock_wait_seconds_bucket{fast}");
      $("fig-contended").textContent = (Math.max(0, waits - zero) / dt).toFixed(1);
      const wsum = d("lockstep_lock_wait_seconds_sum");
      $("fig-wait").textContent = waits ? (wsum / waits * 1000).toFixed(2) + " ms" : "0 ms";
    }
    $("fig-timeouts").textContent = String(get("lockstep_lock_timeouts_total"));
    $("fig-locks").textContent = `${get("lockstep_locks_held")} / ${get("lockstep_locks_waiting")}`;
    const batches = get("lockstep_db_commit_batch_size_count");
    $("fig-batch").textContent = batches ? (get("lockstep_db_commit_batch_size_sum") / batches).toFixed(1) : "–";
    previous = { t, m: now };
  } catch (err) {
    say("Could not read /metrics: " + err.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const saved = sessionStorage.getItem("lockstep-token");
  if (saved) $("token").value = saved;
  $("token").addEventListener("change", () => sessionStorage.setItem("lockstep-token", $("token").value));
  $("token-form").addEventListener("submit", (e) => e.preventDefault());
  $("new-counter").addEventListener("submit", (e) => {
    e.preventDefault();
    increment($("new-counter-name").value.trim());
  });
  $("edit-item").addEventListener("submit", save);
  refresh();
  figures();
  setInterval(refresh, REFRESH_MS);
  setInterval(figures, METRICS_MS);
});
