// lockstep dashboard: lists, live updates over one event stream, figures from /stats.
// The stream is read with fetch() rather than EventSource, which cannot send the
// Authorization header; the token never goes into a URL (URLs end up in logs).
// Every body is read and written with ExactJSON (exact-json.js), never JSON.parse: values
// are shown and saved exactly as the service sent them.
"use strict";

const LIST_LIMIT = 50;          // per list; the stream watches at most 2 x 50 resources
const REFRESH_MS = 5000;        // re-list to pick up resources created elsewhere
const STATS_MS = 2000;
const RETRY_MS = 2000;          // reconnect delay after a stream ends or fails

const $ = (id) => document.getElementById(id);
const counters = new Map();     // name -> value (ExactJSON.Number)
const items = new Map();        // id -> {value, version}, as ExactJSON parsed them
let stream = null;              // {key, controller, lastId} of the open event stream
let previous = null;            // last /stats sample, for rates

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
    init.body = ExactJSON.stringify(body);
    init.headers["Content-Type"] = extra["Content-Type"] || "application/json";
  }
  const r = await fetch(path, init);
  const text = await r.text();
  const data = text ? ExactJSON.fields(ExactJSON.parse(text)) : null;
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
  for (const [name, state] of [...counters].sort((a, b) => a[0] < b[0] ? -1 : 1)) {
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    tr.append(cell(name), cell(String(state.value), "num"));
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
    code.textContent = ExactJSON.stringify(rec.value);
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

// A state older than the one shown (a list or an answer that was on its way while the
// stream brought a newer one) must not undo it: the higher version wins.
function stale(shown, state) {
  return shown !== undefined && state.version !== null && shown.version > state.version;
}

function showCounter(state) {
  const { name, value } = state;
  if (stale(counters.get(name), state)) return;
  if (value === null) counters.delete(name); else counters.set(name, { value, version: state.version });
  const row = document.querySelector(`#counters tr[data-name="${CSS.escape(name)}"]`);
  if (row && value !== null) {
    row.children[1].textContent = String(value);
    flash(row.children[1]);
  } else {
    renderCounters();
  }
}

function showItem(state) {
  if (stale(items.get(state.id), state)) return;
  if (state.version === null) items.delete(state.id);
  else items.set(state.id, { value: state.value, version: state.version });
  renderItems();
  const row = document.querySelector(`#items tr[data-id="${CSS.escape(state.id)}"]`);
  if (row) flash(row);
}

function watch(restart = false) {
  const params = new URLSearchParams();
  for (const name of counters.keys()) params.append("counter", name);
  for (const id of items.keys()) params.append("item", id);
  const key = params.toString();
  if (!restart && stream && stream.key === key) return;
  // The same resources again (a reconnect): resume after the last commit received.
  const lastId = stream && stream.key === key ? stream.lastId : null;
  if (stream) stream.controller.abort();
  stream = null;
  if (!key) return;
  stream = { key, controller: new AbortController(), lastId };
  follow(stream);
}

// One SSE block ("event: x\nid: n\ndata: {...}") -> the entries it carries, shown in order.
function dispatch(block, current) {
  let event = "message", data = "", id = null;
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("id:")) id = line.slice(3).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (!data || (event !== "change" && event !== "snapshot")) return;
  for (const entry of ExactJSON.fields(ExactJSON.parse(data)).changes) {
    const state = ExactJSON.fields(entry);
    if (state.kind === "counter") showCounter(state);
    else showItem(state);
  }
  if (id !== null) current.lastId = id;
}

async function follow(current) {
  const { signal } = current.controller;
  try {
    const wanted = { "Accept": "text/event-stream" };
    if (current.lastId !== null) wanted["Last-Event-ID"] = current.lastId;
    const r = await fetch("/events?" + current.key, { headers: headers(wanted), signal });
    if (!r.ok) {
      const problem = await r.json().catch(() => null);
      throw new Error((problem && problem.detail) || r.statusText);
    }
    say("Live: watching " + (counters.size + items.size) + " resources.");
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, end), current);
        buffer = buffer.slice(end + 2);
      }
    }
    say("Stream ended; reconnecting…");
  } catch (err) {
    if (signal.aborted) return;
    say("Stream interrupted (" + err.message + "); reconnecting…");
  }
  if (signal.aborted) return;
  setTimeout(() => { if (stream === current) watch(true); }, RETRY_MS);
}

// The listed resources, each at the newer of its listed and its shown state.
function relist(shown, rows, keyOf) {
  const listed = new Map();
  for (const row of rows) {
    const key = keyOf(row);
    const state = { value: row.value, version: row.version };
    listed.set(key, stale(shown.get(key), state) ? shown.get(key) : state);
  }
  shown.clear();
  for (const [key, state] of listed) shown.set(key, state);
}

async function refresh() {
  try {
    const [c, i] = await Promise.all([
      call("GET", `/counters?limit=${LIST_LIMIT}`),
      call("GET", `/items?limit=${LIST_LIMIT}`),
    ]);
    relist(counters, c.items.map(ExactJSON.fields), (row) => row.name);
    relist(items, i.items.map(ExactJSON.fields), (row) => row.id);
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
    showCounter(r);
    say(`Counter ${r.name} is now ${r.value}.`);
    watch();
  } catch (err) {
    say(`Increment of ${name} failed: ${err.message}`);
  }
}

function edit(id) {
  const rec = items.get(id);
  $("edit-id").value = id;
  $("edit-value").value = ExactJSON.stringify(rec ? rec.value : null, "  ");
  $("edit-version").value = rec ? String(rec.version) : "";
  $("edit-value").focus();
}

async function save(event) {
  event.preventDefault();
  const id = $("edit-id").value.trim();
  let value;
  try {
    value = ExactJSON.parse($("edit-value").value);
  } catch (err) {
    say("The value is not valid JSON: " + err.message);
    $("edit-value").focus();
    return;
  }
  const version = $("edit-version").value;
  const extra = version && $("edit-id").value === id && items.has(id) ? { "If-Match": `"${version}"` } : {};
  try {
    const r = await call("PUT", `/items/${encodeURIComponent(id)}`, { value }, extra);
    showItem(r);
    watch();
    $("edit-version").value = String(r.version);
    say(`Record ${r.id} saved, version ${r.version}.`);
  } catch (err) {
    say(`Saving ${id} failed: ${err.message}`);
  }
}

// Rates come from the change between two samples of the service's totals.
async function figures() {
  try {
    // Figures, not stored values: plain numbers are exact enough for rates and means.
    const sample = await call("GET", "/stats");
    const now = Object.fromEntries(Object.entries(sample).map(([k, v]) => [k, Number(v)]));
    const t = performance.now();
    if (previous) {
      const dt = (t - previous.t) / 1000;
      const d = (k) => Math.max(0, now[k] - previous.s[k]);
      $("fig-rps").textContent = (d("requests") / dt).toFixed(1);
      const waits = d("lock_waits");
      $("fig-contended").textContent = (Math.max(0, waits - d("lock_waits_uncontended")) / dt).toFixed(1);
      $("fig-wait").textContent = waits ? (d("lock_wait_seconds") / waits * 1000).toFixed(2) + " ms" : "0 ms";
    }
    $("fig-timeouts").textContent = String(now.lock_timeouts);
    $("fig-locks").textContent = `${now.locks_held} / ${now.locks_waiting}`;
    $("fig-batch").textContent = now.commits ? (now.committed_resources / now.commits).toFixed(1) : "–";
    previous = { t, s: now };
  } catch (err) {
    say("Could not read the service figures: " + err.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const saved = sessionStorage.getItem("lockstep-token");
  if (saved) $("token").value = saved;
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("lockstep-token", $("token").value);
    // Everything shown so far may have failed without it: list, stream and sample again.
    if (stream) stream.controller.abort();
    stream = null;
    previous = null;
    refresh();
    figures();
  });
  $("token-form").addEventListener("submit", (e) => e.preventDefault());
  $("new-counter").addEventListener("submit", (e) => {
    e.preventDefault();
    increment($("new-counter-name").value.trim());
  });
  $("edit-item").addEventListener("submit", save);
  refresh();
  figures();
  setInterval(refresh, REFRESH_MS);
  setInterval(figures, STATS_MS);
});
