// rrproxy's live dashboard. Plain JavaScript, no dependencies: it is served by the
// front's admin interface and must work offline.
//
// The token: it arrives in the URL's fragment (#token=...), which the browser never
// sends to the server. We keep it in sessionStorage (this tab only), take it out of
// the address bar, and send it as a Bearer header on every call. It never goes into
// a URL or a cookie, so a link from another site can neither read nor use it.
"use strict";

const TOKEN_KEY = "rrproxy-token";
const THEME_KEY = "rrproxy-theme";
const POLL_MS = 1000;

function takeToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

const token = takeToken();
const $ = (id) => document.getElementById(id);

async function call(method, path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 5000);
  try {
    const response = await fetch(path, { method, headers, cache: "no-store", signal: controller.signal });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    return { status: response.status, body };
  } finally {
    clearTimeout(timer);
  }
}

let sayTimer = null;

function say(text, isError) {
  const box = $("message");
  box.hidden = !text;
  box.textContent = text || "";
  box.className = isError ? "error" : "";
  clearTimeout(sayTimer);
  if (text && !isError) sayTimer = setTimeout(() => say(""), 6000);
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || seconds < 0) return "–";
  seconds = Math.floor(seconds);
  if (seconds < 60) return seconds + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m" + String(seconds % 60).padStart(2, "0") + "s";
  if (seconds < 86400) return Math.floor(seconds / 3600) + "h" + String(Math.floor(seconds % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(seconds / 86400) + "d" + String(Math.floor(seconds % 86400 / 3600)).padStart(2, "0") + "h";
}

function size(bytes) {
  const units = ["B", "K", "M", "G"];
  let value = bytes || 0, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? value + "B" : value.toFixed(1) + units[unit];
}

function num(value, digits) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits ?? 1 });
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value < 1 ? num(value * 1000, 0) + " µs" : num(value, 1) + " ms";
}

function sparkline(points) {
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 140 26");
  svg.setAttribute("preserveAspectRatio", "none");
  const values = (points || []).map((v) => (v === null ? 0 : v));
  if (values.length > 1) {
    const top = Math.max(...values, 1);
    const step = 140 / (values.length - 1);
    const line = document.createElementNS(svgNS, "polyline");
    line.setAttribute("points", values.map((v, i) => (i * step).toFixed(1) + "," + (25 - (v / top) * 24).toFixed(1)).join(" "));
    svg.appendChild(line);
  }
  return svg;
}

function shareCell(share) {
  const cell = el("td");
  const wrap = el("div", null, "share");
  const track = el("div", null, "track");
  const fill = el("div", null, "fill");
  fill.style.width = share === null || share === undefined ? "0" : (share * 100).toFixed(1) + "%";
  track.appendChild(fill);
  wrap.appendChild(track);
  wrap.appendChild(el("span", share === null || share === undefined ? "–" : (share * 100).toFixed(0) + "%"));
  cell.appendChild(wrap);
  return cell;
}

let last = null;

function render(status) {
  last = status;
  const now = Date.now() / 1000;
  const totals = status.totals, front = status.front;
  $("summary").textContent = `pid ${status.pid} · ${status.listening} · policy ${status.policy} · ` +
    `${totals.ready}/${totals.workers} ready · up ${duration(status.uptime_s)}` +
    (status.reloading ? " · reloading…" : "");
  $("total-rps").textContent = num(totals.requests_per_s);
  $("total-requests").textContent = num(totals.requests_total, 0);
  $("handoffs").textContent = num(front.handoffs_per_s);
  $("queue").textContent = `${front.queued} · ${front.held}`;
  $("rehanded").textContent = num(front.rehanded_total, 0);
  $("front-cpu").textContent = front.cpu_percent === null || front.cpu_percent === undefined ? "–" : num(front.cpu_percent) + "%";
  $("restarts").textContent = num(totals.restarts, 0);
  const jain = status.fairness && status.fairness.jain_index;
  $("jain").textContent = jain === null || jain === undefined ? "–" : jain.toFixed(3);

  const series = (status.history && status.history.workers) || {};
  const shares = (status.fairness && status.fairness.shares) || {};
  const body = document.createElement("tbody");
  for (const worker of status.workers) {
    const row = el("tr");
    row.dataset.slot = worker.id;
    row.dataset.pid = worker.pid ?? "";
    row.dataset.state = worker.state;
    const state = worker.crash_looping ? "crash-looping" : worker.state;
    const classes = worker.responses || {};
    const cells = [
      [worker.id, "slot"],
      [worker.pid ?? "–", "pid"],
      [state + (worker.restart_in_s ? ` (${worker.restart_in_s.toFixed(1)}s)` : ""), "state state-" + state],
      [duration(worker.started_at ? now - worker.started_at : null), "uptime"],
      [num(worker.requests_per_s), "rps"],
    ];
    for (const [text, cls] of cells) row.appendChild(el("td", text, cls));
    const spark = el("td", null, "spark-col");
    spark.appendChild(sparkline(series[worker.id]));
    row.appendChild(spark);
    row.appendChild(shareCell(shares[worker.id]));
    const more = [
      [worker.connections_active, "active"],
      [ms(worker.latency_p50_ms), "p50"],
      [ms(worker.latency_p99_ms), "p99"],
      [num(classes["2xx"] || 0, 0), "c2xx"],
      [num(classes["4xx"] || 0, 0), "c4xx"],
      [num(classes["5xx"] || 0, 0), "c5xx" + ((classes["5xx"] || 0) > 0 ? " bad" : "")],
      [worker.cpu_percent === null || worker.cpu_percent === undefined ? "–" : num(worker.cpu_percent) + "%", "cpu"],
      [size(worker.rss_bytes), "rss"],
      [worker.restarts, "restarts"],
      [worker.last_exit || "", "exit"],
    ];
    for (const [text, cls] of more) row.appendChild(el("td", text, cls));
    body.appendChild(row);
  }
  $("workers").replaceChild(body, $("workers").tBodies[0]);
  const badge = $("live");
  badge.textContent = "live " + new Date().toLocaleTimeString();
  badge.className = "badge live";
}

async function poll() {
  try {
    const { status, body } = await call("GET", "/status?history=1");
    if (status === 401) {
      say("This page needs the admin token. Open the link rrproxy printed (it ends in #token=…), " +
          "or run `rrproxy dashboard` for one.", true);
      $("live").className = "badge stale";
      $("live").textContent = "no token";
    } else if (status === 200 && body) {
      if ($("message").classList.contains("error")) say("");
      render(body);
    } else {
      throw new Error("HTTP " + status);
    }
  } catch (error) {
    // The front may be busy or restarting: keep trying, say so.
    $("live").className = "badge stale";
    $("live").textContent = "reconnecting…";
  }
  setTimeout(poll, POLL_MS);
}

function liveWorkers() {
  return last ? last.workers.filter((w) => w.state !== "draining").length : 0;
}

async function action(button, method, path, done) {
  button.disabled = true;
  try {
    const { status, body } = await call(method, path);
    if (status >= 400) say((body && body.error) || "HTTP " + status, true);
    else say(done(body));
  } catch (error) {
    say("cannot reach rrproxy: " + error, true);
  } finally {
    button.disabled = false;
  }
}

function setTheme(theme) {
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

document.addEventListener("DOMContentLoaded", () => {
  setTheme(localStorage.getItem(THEME_KEY));
  $("theme").addEventListener("click", () => {
    const order = [null, "dark", "light"];
    const next = order[(order.indexOf(localStorage.getItem(THEME_KEY)) + 1) % order.length];
    if (next) localStorage.setItem(THEME_KEY, next); else localStorage.removeItem(THEME_KEY);
    setTheme(next);
  });
  $("reload").addEventListener("click", (event) =>
    action(event.target, "POST", "/reload", () => "rolling reload started"));
  $("scale-up").addEventListener("click", (event) =>
    action(event.target, "POST", "/scale?workers=" + (liveWorkers() + 1), (b) => `scaling to ${b.workers} workers`));
  $("scale-down").addEventListener("click", (event) =>
    action(event.target, "POST", "/scale?workers=" + Math.max(1, liveWorkers() - 1), (b) => `scaling to ${b.workers} workers`));
  poll();
});
