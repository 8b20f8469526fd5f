// streamrec dashboard: polls this worker's JSON views and draws plain SVG. No libraries.
"use strict";

const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const state = { refreshes: 0, failures: 0, lastError: null, lookups: 0, unauthorized: 0 };
const series = { role: null, max: 0, points: [] }; // grown with ?since=, trimmed to max
window.streamrecDashboard = state; // read by the browser test

const $ = (id) => document.getElementById(id);

// The worker may want a bearer token (STREAMREC_WEB_TOKEN). It arrives once, in the URL
// (#token=... or ?token=...), moves into sessionStorage (this tab only) and leaves the URL
// and the history; or the user types it into the form the page shows after a 401.
const TOKEN_KEY = "streamrec.token";
let token = null;
try { token = sessionStorage.getItem(TOKEN_KEY); } catch (_) { token = null; }
function setToken(value) {
  token = value || null;
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  } catch (_) { /* storage disabled: the token lives as long as the page */ }
}
(function takeTokenFromURL() {
  const url = new URL(location.href);
  const fragment = new URLSearchParams(url.hash.slice(1));
  const given = fragment.get("token") || url.searchParams.get("token");
  if (!fragment.has("token") && !url.searchParams.has("token")) return;
  fragment.delete("token");
  url.searchParams.delete("token");
  url.hash = fragment.toString();
  history.replaceState(null, "", url.toString());
  setToken(given);
})();

function needToken(rejected) {
  state.unauthorized += 1;
  $("auth").hidden = false;
  const status = $("status");
  status.textContent = rejected ? "token rejected (HTTP 401)" : "token needed (HTTP 401)";
  status.className = "status down";
}

async function getJSON(path) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { cache: "no-store", headers });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  return { status: response.status, body };
}

function text(id, value) { $(id).textContent = value; }

function fmtInt(n) { return n == null ? "–" : Math.round(n).toLocaleString("en-US"); }
function fmtNum(n, digits) { return n == null ? "–" : Number(n).toFixed(digits); }
function fmtSeconds(s) {
  if (s == null) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  return `${Math.round(s / 60)} min`;
}
function clock(t) { return new Date(t * 1000).toTimeString().slice(0, 8); }

function el(tag, attrs, parent) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// A line chart of [{t, v}] into an <svg viewBox="0 0 640 220">; every point gets a circle.
function drawChart(svg, points, { cls = "", digits = 2, empty = "no data yet" } = {}) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = 640, H = 220, L = 48, R = 12, T = 12, B = 28;
  el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }, svg);
  el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }, svg);
  if (!points.length) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg).textContent = empty;
    return 0;
  }
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  let lo = Math.min(...points.map((p) => p.v)), hi = Math.max(...points.map((p) => p.v));
  if (hi - lo < 1e-9) { hi += 0.5 * (Math.abs(hi) || 1); lo = Math.max(0, lo - 0.5 * (Math.abs(lo) || 1)); }
  const x = (t) => L + (t1 > t0 ? ((t - t0) / (t1 - t0)) * (W - L - R) : (W - L - R) / 2);
  const y = (v) => H - B - ((v - lo) / (hi - lo)) * (H - T - B);
  for (const v of [lo, (lo + hi) / 2, hi]) {
    el("line", { x1: L, y1: y(v), x2: W - R, y2: y(v), class: "axis" }, svg);
    el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "label" }, svg).textContent = v.toFixed(digits);
  }
  el("text", { x: L, y: H - 8, class: "label" }, svg).textContent = clock(t0);
  el("text", { x: W - R, y: H - 8, "text-anchor": "end", class: "label" }, svg).textContent = clock(t1);
  const d = points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
  el("path", { d, class: `line ${cls}` }, svg);
  for (const p of points) {
    const dot = el("circle", { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 3, class: cls }, svg);
    el("title", {}, dot).textContent = `${clock(p.t)}: ${p.v.toFixed(digits)}`;
  }
  return points.length;
}

// One hit-rate point per model version: the series samples faster than models change.
function hitRatePoints(series) {
  const out = [];
  let version = null;
  for (const p of series) {
    if (p.hit_rate == null || p.model_version === version) continue;
    version = p.model_version;
    out.push({ t: p.t, v: p.hit_rate });
  }
  return out;
}

function itemRow(list, entry, scoreDigits) {
  const li = document.createElement("li");
  const title = document.createElement("span");
  title.textContent = entry.title || entry.item;
  li.appendChild(title);
  if (entry.title) {
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = entry.item;
    li.appendChild(id);
  }
  if (entry.score != null) {
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = Number(entry.score).toFixed(scoreDigits);
    li.appendChild(score);
  }
  list.appendChild(li);
}

function fillList(id, entries, scoreDigits = 3, empty = "none") {
  const list = $(id);
  list.replaceChildren();
  for (const e of entries) itemRow(list, e, scoreDigits);
  if (!entries.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = empty;
    list.appendChild(li);
  }
}

function renderModel(health, model) {
  const role = (model && model.role) || (health && health.role) || "?";
  text("role", role);
  const ready = health && health.status === "ok";
  const status = $("status");
  status.textContent = ready ? "serving" : "no model yet";
  status.className = `status ${ready ? "ok" : "down"}`;
  if (!model) return;
  text("stat-version", model.version == null ? "–" : `v${model.version}`);
  const snap = model.snapshot_age_seconds;
  text("stat-version-note", snap == null ? "" : `snapshot ${fmtSeconds(snap)} old`);
  const trained = model.trained_events ?? (model.metrics || {}).trained_events;
  text("stat-trained", fmtInt(trained));
  const users = model.n_users ?? (model.metrics || {}).n_users;
  const items = model.n_items ?? (model.metrics || {}).n_items;
  text("stat-size", users == null ? "" : `${fmtInt(users)} users × ${fmtInt(items)} items`);
}

function mergeSeries(body) {
  series.role = body.role;
  series.max = body.max_points;
  series.points.push(...(body.points || []));
  if (series.points.length > series.max) series.points.splice(0, series.points.length - series.max);
  return series;
}

function renderSeries(series) {
  const points = series.points;
  const last = points[points.length - 1] || {};
  text("stat-rate", fmtNum(last.ratings_per_s, 1));
  text("stat-requests", last.requests_per_s == null ? "" : `${fmtNum(last.requests_per_s, 1)} requests/s`);
  text("stat-batch", fmtSeconds(last.batch_seconds));
  text("stat-batch-note", series.role === "scorer" ? "of the announced model" : "last micro-batch fit");
  if (last.freshness_seconds != null) {
    text("stat-fresh", fmtSeconds(last.freshness_seconds));
    text("stat-fresh-note", "delta lag behind the trainer");
  } else {
    text("stat-fresh", "–");
    text("stat-fresh-note", "delta lag (not reported yet)");
  }
  text("stat-hit", fmtNum(last.hit_rate, 3));
  drawChart($("hit-chart"), hitRatePoints(points), { digits: 3, empty: "waiting for trained batches" });
  const rates = points.filter((p) => p.ratings_per_s != null).map((p) => ({ t: p.t, v: p.ratings_per_s }));
  drawChart($("rate-chart"), rates, { cls: "rate", digits: 0, empty: "waiting for samples" });
  const body = $("dlq").querySelector("tbody");
  body.replaceChildren();
  const kinds = Object.entries(last.dead_letters || {}).sort();
  if (!kinds.length) kinds.push(["none", 0]);
  for (const [kind, n] of kinds) {
    const tr = document.createElement("tr");
    const k = document.createElement("td"); k.textContent = kind;
    const v = document.createElement("td"); v.className = "n"; v.textContent = fmtInt(n);
    tr.append(k, v);
    body.appendChild(tr);
  }
}

// The experiments panel: each variant's hit-rate over time, and its interval as a band.
const experiments = { shown: 0 };
state.experiments = experiments;

function drawExperiment(svg, curve) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = 640, H = 220, L = 48, R = 12, T = 12, B = 28;
  el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }, svg);
  el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }, svg);
  if (!curve.length) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg).textContent = "waiting for the first tally";
    return 0;
  }
  const t0 = curve[0].t, t1 = curve[curve.length - 1].t;
  let hi = Math.max(0.01, ...curve.flatMap((p) => [p.control[2], p.candidate[2]]));
  const lo = 0;
  const x = (t) => L + (t1 > t0 ? ((t - t0) / (t1 - t0)) * (W - L - R) : (W - L - R) / 2);
  const y = (v) => H - B - ((v - lo) / (hi - lo)) * (H - T - B);
  for (const v of [lo, hi / 2, hi]) {
    el("line", { x1: L, y1: y(v), x2: W - R, y2: y(v), class: "axis" }, svg);
    el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "label" }, svg).textContent = v.toFixed(3);
  }
  el("text", { x: L, y: H - 8, class: "label" }, svg).textContent = clock(t0);
  el("text", { x: W - R, y: H - 8, "text-anchor": "end", class: "label" }, svg).textContent = clock(t1);
  for (const team of ["control", "candidate"]) {
    const upper = curve.map((p) => `${x(p.t).toFixed(1)},${y(p[team][2]).toFixed(1)}`);
    const lower = curve.slice().reverse().map((p) => `${x(p.t).toFixed(1)},${y(p[team][1]).toFixed(1)}`);
    el("polygon", { points: upper.concat(lower).join(" "), class: `band ${team}` }, svg);
    const d = curve.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p[team][0]).toFixed(1)}`).join(" ");
    el("path", { d, class: `line ${team}` }, svg);
    for (const p of curve) {
      const dot = el("circle", { cx: x(p.t).toFixed(1), cy: y(p[team][0]).toFixed(1), r: 3, class: team }, svg);
      el("title", {}, dot).textContent = `${team} ${clock(p.t)}: ${p[team][0].toFixed(4)} [${p[team][1].toFixed(4)}, ${p[team][2].toFixed(4)}]`;
    }
  }
  return curve.length;
}

function renderExperiments(body) {
  const list = (body && body.experiments) || [];
  const select = $("exp-select");
  const chosen = select.value;
  select.replaceChildren(...list.map((e) => {
    const option = document.createElement("option");
    option.value = e.name;
    option.textContent = `${e.name} (${e.status})`;
    return option;
  }));
  if (!list.length) {
    text("exp-summary", "no experiments");
    drawExperiment($("exp-chart"), []);
    experiments.shown = 0;
    return;
  }
  const running = list.find((e) => e.status === "running");
  const doc = list.find((e) => e.name === chosen) || running || list[0];
  select.value = doc.name;
  const v = doc.variants;
  let line = `${doc.name}: ${doc.status}, ${doc.method}, share ${doc.share}`;
  if (v) {
    const side = (t) => `${t} ${fmtNum(v[t].hit_rate, 4)} [${fmtNum(v[t].interval[0], 4)}, ${fmtNum(v[t].interval[1], 4)}] of ${fmtInt(v[t].impressions)}`;
    line += ` — ${side("control")}; ${side("candidate")}; p = ${Number(doc.p_value).toPrecision(2)}`;
    if (doc.significant) line += " (significant)";
  }
  if (doc.reason) line += ` — ${doc.reason}`;
  text("exp-summary", line);
  experiments.shown = drawExperiment($("exp-chart"), doc.curve || []);
}

$("exp-select").addEventListener("change", () => {
  getJSON("/experiments/").then((r) => { if (r.status === 200) renderExperiments(r.body); });
});

async function refresh() {
  try {
    const last = series.points[series.points.length - 1];
    const since = last ? `?since=${last.t}` : "";
    const [health, model, newer, popular, exps] = await Promise.all([
      getJSON("/health/"), getJSON("/model/"), getJSON(`/dashboard/series/${since}`), getJSON("/items/popular/?limit=10"),
      getJSON("/experiments/"),
    ]);
    if (exps.status === 200) renderExperiments(exps.body);
    const refused = [model, newer, popular].some((r) => r.status === 401);
    renderModel(health.body, refused ? null : model.body);
    if (newer.status === 200) renderSeries(mergeSeries(newer.body));
    if (popular.status === 200) fillList("popular", popular.body.items, 3);
    else fillList("popular", [], 3, refused ? "needs the web token" : "no model loaded yet");
    if (refused) needToken(token !== null);
    else $("auth").hidden = true;
    state.refreshes += 1;
    text("updated", `updated ${new Date().toTimeString().slice(0, 8)}`);
  } catch (err) {
    state.failures += 1;
    state.lastError = String(err);
    const status = $("status");
    status.textContent = "worker unreachable";
    status.className = "status down";
  }
}

async function lookup(user) {
  text("user-summary", `looking up ${user} …`);
  const { status, body } = await getJSON(`/users/${encodeURIComponent(user)}/?limit=20`);
  if (status !== 200 || !body) {
    if (status === 401) needToken(token !== null);
    text("user-summary", `lookup failed (HTTP ${status}) ${body && body.error ? body.error : ""}`);
    return;
  }
  const rec = body.recommendation || { items: [] };
  const seenNote = body.seen == null ? "this worker holds no seen items (ask a scorer)" : `${body.seen_total} seen`;
  text("user-summary", `${rec.source} recommendations from model v${rec.model_version}; ${seenNote}`);
  fillList("user-recs", rec.items, 3, "no recommendations");
  const titles = body.titles || {};
  fillList("user-seen", (body.seen || []).map((item) => ({ item, title: titles[item] })), 3, "none");
  state.lookups += 1;
}

$("lookup").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = $("user-id").value.trim();
  if (user) lookup(user).catch((err) => { state.lastError = String(err); text("user-summary", "lookup failed"); });
});

$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("auth-token").value.trim());
  $("auth-token").value = "";
  refresh();
});

const wanted = new URLSearchParams(location.search).get("user");
if (wanted) { $("user-id").value = wanted; lookup(wanted).catch(() => {}); }
refresh();
setInterval(refresh, REFRESH_MS);
