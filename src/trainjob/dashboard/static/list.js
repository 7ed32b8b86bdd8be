// Job list: every job with status, progress, ETA and age; refreshed every 2 seconds.
"use strict";

(() => {
  const { el, api, badge, bar, num, duration, age } = TJ;
  const body = document.querySelector("#jobs tbody");
  const filter = document.getElementById("filter");
  const params = new URLSearchParams(location.search);
  if (params.get("status")) filter.value = params.get("status");

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
      const data = await api("/api/jobs" + (status ? `?status=${encodeURIComponent(status)}` : ""));
      const jobs = data.jobs.slice().reverse(); // newest first
      body.replaceChildren(...jobs.map(row));
      document.getElementById("empty").classList.toggle("hidden", jobs.length > 0);
      const counts = {};
      for (const j of data.jobs) counts[j.status] = (counts[j.status] || 0) + 1;
      document.getElementById("counts").textContent = Object.entries(counts).map(([k, v]) => `${v} ${k.toLowerCase()}`).join(" · ");
      document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
      document.getElementById("error").classList.add("hidden");
    } catch (e) {
      const box = document.getElementById("error");
      box.textContent = `Cannot load jobs: ${e.message}`;
      box.classList.remove("hidden");
    }
  }

  filter.addEventListener("change", () => {
    const u = new URL(location.href);
    if (filter.value) u.searchParams.set("status", filter.value); else u.searchParams.delete("status");
    history.replaceState(null, "", u);
    refresh();
  });
  refresh();
  setInterval(refresh, 2000);
})();
