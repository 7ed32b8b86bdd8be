// One job: live progress, curves, events, logs and result, polled from /api without reloads.
"use strict";

(() => {
  const { el, api, post, badge, num, duration } = TJ;
  const jobId = location.pathname.split("/").filter(Boolean).pop();
  const $ = (id) => document.getElementById(id);

  // Same grouping as trainjob.plot: known panels first, then one chart per other metric.
  const SKIP = new Set(["step", "epoch", "time", "attempt", "train_runtime", "train_samples_per_second",
    "train_steps_per_second", "total_flos", "train_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"]);
  const PANELS = [
    { key: "loss", title: "Loss", yLabel: "loss", members: ["loss", "eval_loss"] },
    { key: "learning_rate", title: "Learning rate", yLabel: "learning rate", members: ["learning_rate"] },
    { key: "grad_norm", title: "Gradient norm", yLabel: "L2 norm of gradients", members: ["grad_norm"] },
  ];
  const COLORS = { loss: "#2563eb", eval_loss: "#dc2626", learning_rate: "#059669", grad_norm: "#d97706" };
  const PALETTE = ["#7c3aed", "#0891b2", "#be185d", "#4d7c0f", "#b45309", "#1d4ed8"];

  // The history is drawn from the server's view of it (at most POINTS points per series, each
  // series' extremes kept), then grown by polls that fetch only entries logged since; a view that
  // grew past twice POINTS is fetched afresh. Dragging across a chart fetches that range in detail.
  const POINTS = 2000;
  const PAGE = 10000; // entries per poll; a poll that gets a full page is behind: the view is refetched
  const state = {
    series: new Map(), restarts: [], lastAttempt: null, count: 0, downsampled: false, reload: true, zoom: null,
    metricsNext: 0, eventsNext: 0, logCursor: null, logStep: "node-0", logSteps: [],
    charts: new Map(), job: null, resultShown: false, finalPasses: 0, createdAt: null, stopped: false,
  };

  function takeView(view) {
    return { series: new Map(Object.entries(view.series)), restarts: view.restarts, start: view.start, stop: view.stop, downsampled: view.downsampled };
  }

  async function loadHistory() {
    const view = await api(`/api/jobs/${jobId}/series?points=${POINTS}`);
    const v = takeView(view);
    state.series = v.series;
    state.restarts = v.restarts;
    state.downsampled = v.downsampled;
    state.metricsNext = view.stop;
    state.count = view.count;
    let last = null;
    for (const pts of state.series.values()) if (pts.length && (last === null || pts[pts.length - 1][3] > last[3])) last = pts[pts.length - 1];
    state.lastAttempt = last ? last[2] : null;
    state.reload = false;
  }

  function appendEntries(entries, seq) {
    entries.forEach((e, i) => {
      if (typeof e.step !== "number") return;
      const attempt = e.attempt || 0;
      if (state.lastAttempt !== null && attempt !== state.lastAttempt) state.restarts.push({ step: e.step, attempt, seq: seq + i });
      state.lastAttempt = attempt;
      for (const [k, v] of Object.entries(e)) {
        if (SKIP.has(k) || typeof v !== "number" || !isFinite(v)) continue;
        if (!state.series.has(k)) state.series.set(k, []);
        const pts = state.series.get(k);
        pts.push([e.step, v, attempt, seq + i]);
        if (pts.length > 2 * POINTS) state.reload = true;
      }
    });
    state.count = seq + entries.length;
  }

  async function pollHistory() {
    if (state.reload) return loadHistory();
    const m = await api(`/api/jobs/${jobId}/metrics?after=${state.metricsNext}&limit=${PAGE}`);
    appendEntries(m.entries, state.metricsNext);
    state.metricsNext = m.next;
    if (m.entries.length >= PAGE) state.reload = true;
  }

  // A drag across a chart from step a to step b: the positions between the drawn points around them.
  async function zoomTo(a, b) {
    if (a === null) { state.zoom = null; drawCharts(); return; }
    let start = null, stop = null;
    const source = state.zoom ? state.zoom.series : state.series;
    for (const pts of source.values()) {
      for (const p of pts) {
        if (p[0] < a) start = start === null ? p[3] : Math.max(start, p[3]);
        if (p[0] > b) stop = stop === null ? p[3] + 1 : Math.min(stop, p[3] + 1);
      }
    }
    start = start === null ? (state.zoom ? state.zoom.start : 0) : start;
    stop = stop === null ? (state.zoom ? state.zoom.stop : state.count) : stop;
    if (stop - start < 2) return;
    const view = await api(`/api/jobs/${jobId}/series?points=${POINTS}&start=${start}&stop=${stop}`);
    state.zoom = takeView(view);
    drawCharts();
  }

  function panelFor(key) {
    for (const p of PANELS) if (p.members.includes(key)) return p;
    const evalKey = key.startsWith("eval_");
    return { key, title: evalKey ? `${key.slice(5)} (eval)` : key, yLabel: key, members: [key] };
  }

  function chart(panel) {
    if (!state.charts.has(panel.key)) state.charts.set(panel.key, new LineChart($("charts"), { ...panel, onZoom: zoomTo }));
    return state.charts.get(panel.key);
  }

  function drawCharts() {
    const view = state.zoom || state;
    const points = new Map([...view.series].filter(([k]) => !SKIP.has(k)));
    const restarts = view.restarts;
    const n = state.count;
    $("history-note").textContent = state.zoom
      ? `zoomed: entries ${state.zoom.start.toLocaleString()}–${state.zoom.stop.toLocaleString()}${state.zoom.downsampled ? " (lowest and highest value per bucket)" : ""}`
      : n ? `${n.toLocaleString()} logged entries${state.downsampled ? `, drawn as at most ${POINTS.toLocaleString()} points per curve (lowest and highest value per bucket)` : ""}; drag across a chart to zoom` : "";
    $("zoom-reset").classList.toggle("hidden", !state.zoom);
    const panels = new Map();
    for (const p of PANELS.slice(0, 2)) panels.set(p.key, { panel: p, keys: [] }); // always shown
    for (const k of points.keys()) {
      const p = panelFor(k);
      if (!panels.has(p.key)) panels.set(p.key, { panel: p, keys: [] });
      panels.get(p.key).keys.push(k);
    }
    const xMax = state.zoom ? null : ((state.job || {}).progress || {}).totalSteps || null;
    let paletteIndex = 0;
    for (const { panel, keys } of panels.values()) {
      const ordered = panel.members.length > 1 ? panel.members.filter((m) => keys.includes(m)) : keys;
      const series = ordered.map((k) => ({
        key: k, label: k, points: points.get(k),
        color: COLORS[k] || PALETTE[paletteIndex++ % PALETTE.length],
        dashed: k.startsWith("eval_") && panel.members.length > 1,
        markers: k.startsWith("eval_"),
      }));
      const ended = state.job && state.job.is_terminal;
      chart(panel).update(series, xMax, restarts, ended ? "the job logged no values" : "waiting for the first logged values…", !!state.zoom);
    }
  }

  function stat(k, v, title) {
    return el("div", { class: "stat", title }, el("div", { class: "k", text: k }), el("div", { class: "v", text: v }));
  }

  function renderJob(job) {
    state.job = job;
    state.createdAt = job.created_at;
    document.title = `trainjob · ${job.name}`;
    document.body.dataset.status = job.status;
    $("name").textContent = job.name;
    const pairs = (o) => Object.entries(o || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    $("job-id").textContent = [pairs(job.labels), pairs(job.annotations)].filter(Boolean).join(" · ");
    $("status").replaceChildren(badge(job.status, job.queue_position ? `#${job.queue_position} in queue` : ""), TJ.stalled(job) || "");
    $("stop").disabled = job.is_terminal;
    $("delete").disabled = false;
    const p = job.progress || {};
    const pct = p.progressPercentage;
    $("bar").replaceWith(Object.assign(TJ.bar(pct, job.status, true), { id: "bar" }));
    $("pct").textContent = pct === null || pct === undefined ? "–" : `${pct}%`;
    $("message").textContent = job.message || (job.progress ? "" : job.is_terminal ? "no progress was recorded" : "waiting for the first training step…");
    const train = p.trainMetrics || {};
    const stats = [];
    if (p.currentStep !== undefined && p.currentStep !== null) stats.push(stat("step", `${p.currentStep} / ${p.totalSteps || "?"}`));
    if (p.totalEpochs) stats.push(stat("epoch", `${p.currentEpoch || 0} / ${p.totalEpochs}`));
    if (!job.is_terminal && p.estimatedRemainingSeconds !== null && p.estimatedRemainingSeconds !== undefined) stats.push(stat("ETA", duration(p.estimatedRemainingSeconds), p.estimatedRemainingTimeSummary || ""));
    stats.push(stat(job.is_terminal ? "runtime" : "elapsed", duration(job.runtime_seconds)));
    if (train.throughput_samples_sec !== undefined && train.throughput_samples_sec !== null) stats.push(stat("throughput", `${num(train.throughput_samples_sec)} samples/s`));
    if (train.loss !== undefined) stats.push(stat("loss", num(train.loss)));
    if (train.learning_rate !== undefined) stats.push(stat("learning rate", num(train.learning_rate)));
    for (const [k, v] of Object.entries(TJ.interesting(p.evalMetrics))) stats.push(stat(k, num(v)));
    if (job.attempt) stats.push(stat("attempt", String(job.attempt)));
    stats.push(stat("processes", `${job.num_nodes} × ${job.procs_per_node}`, "nodes × processes per node"));
    $("stats").replaceChildren(...stats);
    const tracking = (job.spec || {}).enable_progression_tracking !== false;
    $("no-tracking").classList.toggle("hidden", tracking);
    $("charts").classList.toggle("hidden", !tracking);
    renderDetails(job);
  }

  function kvRows(table, rows) {
    table.replaceChildren(...rows.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) =>
      el("tr", {}, el("th", { text: k }), el("td", {}, v instanceof Node ? v : String(v)))));
  }

  function renderDetails(job) {
    const s = job.spec || {};
    const res = Object.entries(s.resources || {}).filter(([, v]) => v).map(([k, v]) => `${k}=${k === "memory" ? `${(v / 2 ** 30).toFixed(1)} GiB` : v}`).join(", ");
    kvRows($("details-kv"), [
      ["runs", el("span", { class: "mono", text: job.entrypoint })],
      ["trainer", s.trainer],
      ["backend", job.backend],
      ["nodes × processes", `${job.num_nodes} × ${job.procs_per_node}`],
      ["resources / node", res || "no explicit request"],
      ["packages", (s.packages_to_install || []).join(", ")],
      ["environment", Object.keys(s.env || {}).join(", ")],
      ["max restarts", s.max_restarts],
      ["created", TJ.dateTime(job.created_at)],
      ["started", job.started_at ? TJ.dateTime(job.started_at) : null],
      ["finished", job.finished_at ? TJ.dateTime(job.finished_at) : null],
      ["job folder", el("span", { class: "mono", text: job.job_dir || "" })],
    ]);
  }

  function renderEvents(events) {
    const list = $("events");
    const start = Date.parse(state.createdAt || (events[0] || {}).time);
    for (const e of events) {
      const rel = (Date.parse(e.time) - start) / 1000;
      list.append(el("li", { "data-reason": e.reason },
        el("span", { class: "t", title: TJ.dateTime(e.time), text: `+${rel < 100 ? rel.toFixed(1) : Math.round(rel)}s` }),
        el("span", { class: `r ${e.reason}`, text: e.reason }),
        el("span", { class: "m", text: e.message })));
    }
    if (events.length) list.scrollTop = list.scrollHeight;
  }

  function renderLogs(data) {
    const pre = $("logs");
    if (JSON.stringify(data.steps) !== JSON.stringify(state.logSteps)) {
      state.logSteps = data.steps;
      $("log-step").replaceChildren(...data.steps.map((s) => el("option", { value: s, text: s, selected: s === state.logStep })));
    }
    if (data.skipped_bytes > 0 && pre.childNodes.length === 0) {
      pre.append(`… ${TJ.bytes(data.skipped_bytes)} of earlier output not shown (all of it: trainjob logs ${jobId}) …\n`);
    }
    if (data.lines.length) pre.append(data.lines.join("\n") + "\n");
    while (pre.childNodes.length > 400) pre.firstChild.remove();
    if ($("autoscroll").checked) pre.scrollTop = pre.scrollHeight;
  }

  function renderResult(r) {
    $("result").classList.remove("hidden");
    const rv = r.return_value === null || r.return_value === undefined ? null : el("span", { class: "mono", text: JSON.stringify(r.return_value) });
    kvRows($("result-kv"), [
      ["status", badge(r.status)],
      ["checkpoint", r.checkpoint ? el("span", { class: "mono", text: r.checkpoint }) : null],
      ["best checkpoint", r.best_checkpoint ? el("span", { class: "mono", text: r.best_checkpoint }) : null],
      ["checkpoints", (r.checkpoints || []).length ? String(r.checkpoints.length) : null],
      ["output folder", r.output_dir ? el("span", { class: "mono", text: r.output_dir }) : null],
      ["log folder", r.log_dir ? el("span", { class: "mono", text: r.log_dir }) : null],
      ["return value", rv],
    ]);
    const metrics = TJ.interesting(r.metrics);
    kvRows($("result-metrics"), Object.entries(metrics).map(([k, v]) => [k, num(v)]));
    const box = $("result-error");
    box.replaceChildren();
    if (r.error) {
      const e = r.error;
      box.append(el("p", { class: "error-banner", text: `${e.type || "Error"}${e.rank !== null && e.rank !== undefined ? ` on rank ${e.rank}` : ""}: ${e.message || ""}` }));
      if (e.hint) box.append(el("p", { text: `hint: ${e.hint}` }));
      if (e.traceback) box.append(el("pre", { class: "traceback", text: e.traceback }));
    }
  }

  function showError(msg) {
    const box = $("error");
    box.textContent = msg;
    box.classList.toggle("hidden", !msg);
  }

  async function tick() {
    try {
      const job = await api(`/api/jobs/${jobId}`);
      renderJob(job);
      await pollHistory();
      drawCharts();
      const ev = await api(`/api/jobs/${jobId}/events?after=${state.eventsNext}`);
      state.eventsNext = ev.next;
      renderEvents(ev.events);
      const step = state.logStep;
      // The log's tail first, then only what follows the cursor (byte offsets): never the whole log.
      for (let reads = 0; reads < 8; reads++) {
        const logUrl = `/api/jobs/${jobId}/logs?step=${encodeURIComponent(step)}` + (state.logCursor === null ? "" : `&cursor=${encodeURIComponent(state.logCursor)}`);
        const lg = await api(logUrl);
        if (step !== state.logStep) break; // the user picked another log meanwhile
        state.logCursor = lg.cursor;
        renderLogs(lg);
        if (!lg.more) break;
      }
      if (job.is_terminal && !state.resultShown) {
        renderResult(await api(`/api/jobs/${jobId}/result`));
        state.resultShown = true;
      }
      $("updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
      showError("");
      if (job.is_terminal) state.finalPasses += 1;
    } catch (e) {
      if (e.status === 404) {
        showError(`Job ${jobId} does not exist (it may have been deleted).`);
        $("stop").disabled = true; $("delete").disabled = true;
        return; // nothing more to poll
      }
      showError(`Cannot reach the dashboard: ${e.message}. Retrying…`);
    }
    // A job that ended gets one more pass (late metrics and log lines), then polling stops.
    if (state.finalPasses < 2) setTimeout(tick, TJ.pollMs);
  }

  $("log-step").addEventListener("change", (ev) => {
    state.logStep = ev.target.value;
    state.logCursor = null;
    $("logs").replaceChildren();
    if (state.finalPasses >= 2) {
      api(`/api/jobs/${jobId}/logs?step=${encodeURIComponent(state.logStep)}`).then((lg) => { state.logCursor = lg.cursor; renderLogs(lg); });
    }
  });

  $("stop").addEventListener("click", async () => {
    if (!confirm(`Stop job ${jobId}? Every rank saves a checkpoint, then the job ends Stopped.`)) return;
    $("stop").disabled = true;
    try { await post(`/api/jobs/${jobId}/stop`); } catch (e) { showError(`Stop failed: ${e.message}`); $("stop").disabled = false; }
  });

  $("delete").addEventListener("click", async () => {
    if (!confirm(`Delete job ${jobId} with its logs and checkpoints? This cannot be undone.`)) return;
    try { await post(`/api/jobs/${jobId}/delete`); location.href = "/"; } catch (e) { showError(`Delete failed: ${e.message}`); }
  });

  $("zoom-reset").addEventListener("click", () => zoomTo(null));

  let resizeTimer = null;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(drawCharts, 150); });

  TJ.session().catch(() => {}).finally(tick);
})();
