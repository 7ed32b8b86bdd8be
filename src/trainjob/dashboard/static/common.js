// Shared helpers of the dashboard pages: API calls, formatting, DOM building.
// Untrusted text (job names, log lines, error messages) only ever goes through textContent.
"use strict";

const TJ = (() => {
  let csrf = null;
  let pollMs = 1500;

  async function api(path) {
    const r = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      const err = new Error(body.error || `${r.status} ${r.statusText}`);
      err.status = r.status;
      throw err;
    }
    return body;
  }

  async function session() {
    const s = await api("/api/session");
    csrf = s.csrf;
    pollMs = s.poll_ms || pollMs;
    return s;
  }

  // Actions carry the CSRF header; a dashboard restarted since the page loaded gets a fresh one.
  async function post(path) {
    if (!csrf) await session();
    const send = () => fetch(path, { method: "POST", credentials: "same-origin", headers: { "X-Trainjob-Csrf": csrf, Accept: "application/json" } });
    let r = await send();
    if (r.status === 403) { await session(); r = await send(); }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
    return body;
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function badge(status, extra) {
    return el("span", { class: `badge ${status}`, "data-status": status, text: status + (extra ? ` ${extra}` : "") });
  }

  // A Running job whose newest step is over 2 minutes old (the server decides: no_step_for_seconds).
  function stalled(job) {
    if (!job.no_step_for_seconds) return null;
    return el("span", { class: "stalled", title: "no training step completed for this long; the job may be hung (see its logs, or set progress_timeout)", text: `no step for ${duration(job.no_step_for_seconds)}` });
  }

  function bar(pct, status, big) {
    const fill = el("span");
    fill.style.width = `${Math.max(0, Math.min(100, pct || 0))}%`;
    return el("div", { class: `bar ${status || ""} ${big ? "big" : ""}`, role: "progressbar", "aria-valuenow": pct ?? "", "aria-valuemin": 0, "aria-valuemax": 100 }, fill);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    let s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s}s`;
    let m = Math.floor(s / 60); s %= 60;
    if (m < 60) return `${m}m ${String(s).padStart(2, "0")}s`;
    let h = Math.floor(m / 60); m %= 60;
    if (h < 24) return `${h}h ${String(m).padStart(2, "0")}m`;
    const d = Math.floor(h / 24); h %= 24;
    return `${d}d ${h}h`;
  }

  function age(iso) {
    if (!iso) return "–";
    return duration((Date.now() - Date.parse(iso)) / 1000) + " ago";
  }

  function num(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2).replace(/\.?0+e/, "e");
    return String(Number(v.toPrecision(4)));
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  function time(iso) {
    if (!iso) return "–";
    return new Date(iso).toLocaleTimeString([], { hour12: false });
  }

  function dateTime(iso) {
    if (!iso) return "–";
    return new Date(iso).toLocaleString([], { hour12: false });
  }

  // Figures about the run itself (runtime, throughput), not the model: kept out of summaries.
  function interesting(metrics) {
    const out = {};
    for (const [k, v] of Object.entries(metrics || {})) {
      if (/(_runtime|_samples_per_second|_steps_per_second|total_flos)$/.test(k)) continue;
      out[k] = v;
    }
    return out;
  }

  return { api, post, session, el, badge, stalled, bar, duration, age, num, bytes, time, dateTime, interesting, get pollMs() { return pollMs; } };
})();
