// Job list: the newest jobs, a page at a time (filtered and paged by the server), with status,
// progress, ETA and age; refreshed every 2 seconds.
"use strict";

(() => {
  const { el, api, badge, bar, num, duration, age } = TJ;
  const PAGE = 100;
  const body = document.querySelector("#jobs tbody");
  const filter = document.getElementById("filter");
  const params = new URLSearchParams(location.search);
  if (params.get("status")) filter.value = params.get("status");
  let offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);

  function row(job) {
    const p = job.progress || {};
    const pct = p.progressPercentage;
    const link = el("a", { href: `/jobs/${job.id}`, class: "name", text: job.name });
    const labels = Object.entries(job.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    const name = el("td", {}, link, labels ? el("div", { class: "muted mono labels", text: labels, title: "labels" }) : null);
    const progress = el("td", {}, el("div", { class: "progress-cell" }, bar(pct, job.status), el("span", { class: "num", text: pct === null || pct === undefined ? "–" : `${pct}%` })));
    const eta = !job.is_terminal && p.estimatedRemainingSeconds !== null && p.estimatedRemainingSeconds !== undefined ? duration(p.estimatedRemainingSeconds) : "–";
    const tr = el("tr", { class: "row", "data-job": job.id, "data-status": job.status },
      name,
      el("td", {}, badge(job.status, job.queue_position ? `#${job.queue_position}` : ""), TJ.stalled(job) || ""),
      progress,
      el("td", { class: "num", text: p.currentStep !== undefined && p.currentStep !== null ? `${p.currentStep} / ${p.totalSteps || "?"}` : "–" }),
      el("td", { class: "num", text: num((p.trainMetrics || {}).loss) }),
      el("td", { class: "num", text: eta }),
      el("td", { class: "num", title: TJ.dateTime(job.created_at), text: age(job.created_at) }),
      el("td", { class: "num", text: duration(job.runtime_seconds) }),
    );
    tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") location.href = `/jobs/${job.id}`; });
    return tr;
  }

  async function refresh() {
    const status = filter.value;
    try {
      const data = await api(`/api/jobs?newest=1&limit=${PAGE}&offset=${offset}` + (status ? `&status=${encodeURIComponent(status)}` : ""));
      const jobs = data.jobs; // newest first
      body.replaceChildren(...jobs.map(row));
      document.getElementById("empty").classList.toggle("hidden", data.total > 0);
      document.getElementById("counts").textContent = Object.entries(data.counts).map(([k, v]) => `${v} ${k.toLowerCase()}`).join(" · ");
      document.getElementById("page").textContent = data.total > jobs.length ? `${offset + 1}–${offset + jobs.length} of ${data.total}` : "";
      document.getElementById("newer").classList.toggle("hidden", offset === 0);
      document.getElementById("older").classList.toggle("hidden", offset + jobs.length >= data.total);
      document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
      document.getElementById("error").classList.add("hidden");
    } catch (e) {
      const box = document.getElementById("error");
      box.textContent = `Cannot load jobs: ${e.message}`;
      box.classList.remove("hidden");
    }
  }

  function go(newOffset) {
    offset = Math.max(0, newOffset);
    const u = new URL(location.href);
    if (filter.value) u.searchParams.set("status", filter.value); else u.searchParams.delete("status");
    if (offset) u.searchParams.set("offset", offset); else u.searchParams.delete("offset");
    history.replaceState(null, "", u);
    refresh();
  }

  filter.addEventListener("change", () => go(0));
  document.getElementById("newer").addEventListener("click", () => go(offset - PAGE));
  document.getElementById("older").addEventListener("click", () => go(offset + PAGE));
  refresh();
  setInterval(refresh, 2000);
})();
