// One optimization: trials table (best first, highlighted), objective by trial, objective by each
// parameter, and every trial's objective curve by training step on one chart. Or, at
// /optimizations, the list of them. Polls until the optimization has ended.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const name = decodeURIComponent(location.pathname.split("/")[2] || "");
  const PALETTE = ["#2563eb", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569", "#ea580c"];
  const BEST = "#15803d";
  const charts = new Map();
  const curves = new Map(); // trial name -> [[step, value], ...]
  const after = new Map(); // trial name -> entries already read

  function chart(key, title, xLabel, yLabel) {
    if (!charts.has(key)) charts.set(key, new LineChart($("charts"), { key, title, xLabel, yLabel }));
    return charts.get(key);
  }

  function showError(e) {
    $("error").textContent = String(e.message || e);
    $("error").classList.remove("hidden");
  }

  function paramsText(p) {
    return Object.entries(p || {}).map(([k, v]) => `${k}=${TJ.num(v)}`).join("  ");
  }

  async function list() {
    $("list").classList.remove("hidden");
    const data = await TJ.api("/api/optimizations");
    const t = $("studies");
    t.replaceChildren(TJ.el("tr", {}, ...["name", "status", "trials", "objective", "best", "best values"].map((h) => TJ.el("th", { text: h }))));
    for (const s of data.optimizations) {
      const done = s.trials.filter((x) => ["Complete", "Pruned", "Failed"].includes(x.status)).length;
      const best = s.best_trial || {};
      t.append(TJ.el("tr", {},
        TJ.el("td", {}, TJ.el("a", { href: `/optimizations/${encodeURIComponent(s.name)}`, text: s.name })),
        TJ.el("td", {}, TJ.badge(s.status)), TJ.el("td", { text: `${done}/${s.num_trials}` }),
        TJ.el("td", { text: `${s.metric} (${s.direction})` }), TJ.el("td", { text: TJ.num(best.value) }),
        TJ.el("td", { class: "mono", text: paramsText(best.parameters) })));
    }
  }

  function draw(s) {
    const best = (s.best_trial || {}).name;
    const color = (t, i) => (t.name === best ? BEST : PALETTE[i % PALETTE.length]);
    const done = s.trials.filter((t) => t.value !== null && t.status === "Complete"); // a pruned trial's last value is no result
    chart("by-trial", `${s.metric} by trial`, "trial", s.metric).update([
      { key: "value", label: s.metric, color: "#2563eb", markers: true, points: done.map((t) => [t.number, t.value]) },
    ], null, [], "no trial has a value yet", true);
    for (const [param, space] of Object.entries(s.search_space)) {
      const log = space.startsWith("loguniform");
      const pts = done.filter((t) => typeof t.parameters[param] === "number")
        .map((t) => [log ? Math.log10(t.parameters[param]) : t.parameters[param], t.value]).sort((a, b) => a[0] - b[0]);
      if (!pts.length && done.length) continue; // a choice of strings: see the table
      chart(`param-${param}`, `${s.metric} by ${param}`, log ? `log10(${param})` : param, s.metric).update([
        { key: param, label: param, color: "#7c3aed", markers: true, points: pts },
      ], null, [], "no trial has a value yet", true);
    }
    const series = s.trials.filter((t) => curves.has(t.name)).map((t, i) => ({
      key: t.name, label: `#${t.number}${t.name === best ? " (best)" : ""}${t.status === "Pruned" ? " (pruned)" : ""}`,
      color: color(t, i), dashed: t.status === "Pruned", markers: true, points: curves.get(t.name),
    }));
    chart("curves", `${s.metric} of every trial`, "training step", s.metric).update(series, null, [], "no trial logged values yet", false);

    const sign = s.direction === "minimize" ? 1 : -1;
    const rows = [...s.trials].sort((a, b) => (a.value === null) - (b.value === null) || sign * ((a.value ?? 0) - (b.value ?? 0)) || a.number - b.number);
    const table = $("trials");
    table.replaceChildren(TJ.el("tr", {}, ...["#", "status", s.metric, "step", "values", "job", "error"].map((h) => TJ.el("th", { text: h }))));
    for (const t of rows) {
      table.append(TJ.el("tr", { class: t.name === best ? "best" : null, "data-trial": t.number },
        TJ.el("td", { text: (t.name === best ? "★ " : "") + t.number }), TJ.el("td", {}, TJ.badge(t.status)),
        TJ.el("td", { text: TJ.num(t.value) }), TJ.el("td", { text: TJ.num(t.step) }),
        TJ.el("td", { class: "mono", text: paramsText(t.parameters) }),
        TJ.el("td", {}, t.job_status ? TJ.el("a", { href: `/jobs/${encodeURIComponent(t.name)}`, text: t.name }) : t.name),
        TJ.el("td", { class: "muted", text: t.error ? `${t.error.type}: ${t.error.message}` : "" })));
    }
  }

  async function detail() {
    $("detail").classList.remove("hidden");
    const q = [...after].map(([k, v]) => `${k}:${v}`).join(",");
    const s = await TJ.api(`/api/optimizations/${encodeURIComponent(name)}${q ? `?after=${encodeURIComponent(q)}` : ""}`);
    for (const [trial, c] of Object.entries(s.curves)) {
      curves.set(trial, (curves.get(trial) || []).concat(c.points));
      after.set(trial, c.after);
    }
    $("name").textContent = s.name;
    $("status").replaceChildren(TJ.badge(s.status));
    const done = s.trials.filter((t) => ["Complete", "Pruned", "Failed"].includes(t.status)).length;
    $("summary").textContent = `${done}/${s.num_trials} trials, ${s.parallel_trials} at once · ${s.metric} (${s.direction}) · ${Object.entries(s.search_space).map(([k, v]) => `${k}: ${v}`).join(", ")}`;
    $("message").textContent = s.message || "";
    document.title = `trainjob · ${s.name}`;
    const first = !charts.size;
    draw(s);
    if (first) requestAnimationFrame(() => charts.forEach((c) => c.render())); // sized once the grid has laid out
    return s;
  }

  async function tick() {
    try {
      const s = name ? await detail() : await list();
      $("updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
      if (!name || ["Complete", "Failed", "Stopped"].includes(s.status)) return;
    } catch (e) {
      showError(e);
    }
    setTimeout(tick, TJ.pollMs);
  }
  TJ.session().then(tick, showError);
})();
