// A small SVG line chart: axes with "nice" ticks, grid, axis titles, legend, restart markers
// and a hover read-out. No library: the page draws its own charts.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// Round step (1, 2 or 5 x 10^k) giving about `count` intervals over `range`.
function niceStep(range, count) {
  const raw = range / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const n = raw / mag;
  return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
}

function niceTicks(min, max, count, integer) {
  if (!(isFinite(min) && isFinite(max))) return { ticks: [0, 1], step: 1 };
  if (min === max) {
    const pad = min === 0 ? 1 : Math.abs(min) * 0.1;
    min -= pad; max += pad;
  }
  let step = niceStep(max - min, count);
  if (integer) step = Math.max(1, Math.round(step));
  const start = Math.floor(min / step + 1e-9) * step;
  const end = Math.ceil(max / step - 1e-9) * step;
  const ticks = [];
  for (let i = 0, v = start; v <= end + step * 1e-6 && i < 100; i++, v = start + i * step) ticks.push(Number(v.toPrecision(12)));
  return { ticks, step };
}

// Tick labels with as many digits as the tick step needs; exponent form for tiny/huge values.
function tickFormatter(step, maxAbs) {
  if (maxAbs !== 0 && (maxAbs < 1e-2 || maxAbs >= 1e5)) {
    const digits = Math.max(0, Math.floor(Math.log10(maxAbs)) - Math.floor(Math.log10(step)));
    return (v) => (v === 0 ? "0" : v.toExponential(Math.min(digits, 4)));
  }
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return (v) => v.toFixed(Math.min(decimals, 6));
}

function valueText(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3);
  return String(Number(v.toPrecision(5)));
}

class LineChart {
  // opts: {key, title, yLabel, xLabel, onZoom}; onZoom(a, b): the user dragged across steps a..b
  // (onZoom(null): double-click, back to the whole range).
  constructor(container, opts) {
    this.opts = Object.assign({ xLabel: "training step" }, opts);
    this.series = [];
    this.xMax = null;
    this.restarts = [];
    this.card = TJ.el("div", { class: "card chart", "data-chart": opts.key });
    this.svg = svgEl("svg", { role: "img", "aria-label": `${opts.title} by training step` });
    this.card.append(this.svg);
    container.append(this.card);
    this.hoverX = null;
    this.dragFrom = null;
    this.svg.addEventListener("mousemove", (ev) => this.onHover(ev));
    this.svg.addEventListener("mouseleave", () => { this.hoverX = null; this.dragFrom = null; this.render(); });
    if (this.opts.onZoom) {
      this.svg.addEventListener("mousedown", (ev) => { const x = this.stepAt(ev); if (x !== null) { this.dragFrom = x; ev.preventDefault(); } });
      this.svg.addEventListener("mouseup", (ev) => {
        const from = this.dragFrom, to = this.stepAt(ev);
        this.dragFrom = null;
        if (from === null || to === null || !this.scale) return;
        const plotW = this.L.width - this.L.left - this.L.right;
        if (Math.abs(to - from) / (this.scale.x1 - this.scale.x0 || 1) * plotW < 8) { this.render(); return; } // a click, not a drag
        this.opts.onZoom(Math.min(from, to), Math.max(from, to));
      });
      this.svg.addEventListener("dblclick", () => this.opts.onZoom(null));
    }
  }

  // series: [{key, label, color, dashed, markers, points: [[step, value, attempt, ...], ...]}]
  // fitX: the x axis spans the data (a zoomed range), not 0..max.
  update(series, xMax, restarts, emptyText, fitX) {
    this.emptyText = emptyText || "waiting for the first logged values…";
    this.series = series;
    this.xMax = xMax;
    this.fitX = !!fitX;
    this.restarts = restarts || [];
    this.render();
  }

  stepAt(ev) {
    if (!this.scale || !this.L) return null;
    const rect = this.svg.getBoundingClientRect();
    const px = ((ev.clientX - rect.left) / rect.width) * this.L.width;
    const plotW = this.L.width - this.L.left - this.L.right;
    if (px < this.L.left || px > this.L.left + plotW) return null;
    return this.scale.x0 + ((px - this.L.left) / plotW) * (this.scale.x1 - this.scale.x0);
  }

  layout() {
    const width = Math.max(320, Math.round(this.svg.getBoundingClientRect().width || this.card.clientWidth || 600));
    const height = 260;
    return { width, height, left: 66, right: 18, top: 34, bottom: 46 };
  }

  render() {
    const L = this.layout();
    this.L = L;
    const svg = this.svg;
    svg.setAttribute("viewBox", `0 0 ${L.width} ${L.height}`);
    svg.replaceChildren();
    svg.append(svgEl("text", { class: "title", x: 2, y: 14 }, this.opts.title));
    const all = this.series.flatMap((s) => s.points);
    const plotH = L.height - L.top - L.bottom;

    // y ticks first: the left margin must fit their longest label beside the axis title.
    let yt = null, fmtY = null;
    if (all.length) {
      const ys = all.map((p) => p[1]);
      let yMin = Math.min(...ys), yMax = Math.max(...ys);
      const pad = (yMax - yMin) * 0.06;
      // Padding must not push a non-negative quantity (a learning rate, a loss) below zero.
      const lo = yMin >= 0 ? Math.max(0, yMin - pad) : yMin - pad;
      yt = niceTicks(lo, yMax + pad, Math.max(3, Math.floor(plotH / 45)), false);
      fmtY = tickFormatter(yt.step, Math.max(Math.abs(yt.ticks[0]), Math.abs(yt.ticks[yt.ticks.length - 1])));
      L.left = Math.max(52, Math.round(30 + 6.8 * Math.max(...yt.ticks.map((t) => fmtY(t).length))));
    }
    const plotW = L.width - L.left - L.right;
    svg.append(svgEl("text", { class: "axis-label", x: L.left + plotW / 2, y: L.height - 6, "text-anchor": "middle" }, this.opts.xLabel));
    svg.append(svgEl("text", { class: "axis-label", transform: `translate(14 ${L.top + plotH / 2}) rotate(-90)`, "text-anchor": "middle" }, this.opts.yLabel));
    if (all.length === 0) {
      svg.append(svgEl("rect", { x: L.left, y: L.top, width: plotW, height: plotH, fill: "none", stroke: "#e5e7eb" }));
      svg.append(svgEl("text", { class: "placeholder", x: L.left + plotW / 2, y: L.top + plotH / 2, "text-anchor": "middle" }, this.emptyText || "waiting for the first logged values…"));
      return;
    }
    let xsMin = Infinity, xsMax = Math.max(this.xMax || 0, 1);
    for (const p of all) { if (p[0] > xsMax) xsMax = p[0]; if (p[0] < xsMin) xsMin = p[0]; }
    const xt = niceTicks(this.fitX ? xsMin : 0, xsMax, Math.max(3, Math.floor(plotW / 90)), true);
    const x0 = xt.ticks[0], x1 = xt.ticks[xt.ticks.length - 1];
    const y0 = yt.ticks[0], y1 = yt.ticks[yt.ticks.length - 1];
    const sx = (x) => L.left + ((x - x0) / (x1 - x0 || 1)) * plotW;
    const sy = (y) => L.top + plotH - ((y - y0) / (y1 - y0 || 1)) * plotH;
    this.scale = { sx, sy, x0, x1 };

    const grid = svgEl("g", { class: "grid" });
    const axis = svgEl("g", { class: "axis" });
    for (const t of yt.ticks) {
      grid.append(svgEl("line", { x1: L.left, x2: L.left + plotW, y1: sy(t), y2: sy(t) }));
      axis.append(svgEl("line", { x1: L.left - 4, x2: L.left, y1: sy(t), y2: sy(t) }));
      axis.append(svgEl("text", { x: L.left - 7, y: sy(t) + 4, "text-anchor": "end", class: "tick y" }, fmtY(t)));
    }
    for (const t of xt.ticks) {
      grid.append(svgEl("line", { x1: sx(t), x2: sx(t), y1: L.top, y2: L.top + plotH }));
      axis.append(svgEl("line", { x1: sx(t), x2: sx(t), y1: L.top + plotH, y2: L.top + plotH + 4 }));
      axis.append(svgEl("text", { x: sx(t), y: L.top + plotH + 17, "text-anchor": "middle", class: "tick x" }, String(t)));
    }
    axis.append(svgEl("line", { x1: L.left, x2: L.left + plotW, y1: L.top + plotH, y2: L.top + plotH }));
    axis.append(svgEl("line", { x1: L.left, x2: L.left, y1: L.top, y2: L.top + plotH }));
    svg.append(grid, axis);

    const marks = svgEl("g", { class: "restart" });
    for (const r of this.restarts) {
      marks.append(svgEl("line", { x1: sx(r.step), x2: sx(r.step), y1: L.top, y2: L.top + plotH }));
      marks.append(svgEl("text", { x: sx(r.step) + 3, y: L.top + 10, "font-size": 10 }, `restart ${r.attempt}`));
    }
    svg.append(marks);

    for (const s of this.series) {
      let d = "", last = null;
      for (const p of s.points) {
        d += `${last === null || p[2] !== last ? "M" : "L"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`;
        last = p[2];
      }
      svg.append(svgEl("path", {
        class: "series", d, stroke: s.color, "stroke-dasharray": s.dashed ? "6 4" : null,
        "data-key": s.key, "data-points": s.points.length,
      }));
      if (s.markers || s.points.length < 3) {
        const g = svgEl("g", { "data-markers": s.key });
        for (const p of s.points) g.append(svgEl("circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 3, fill: s.color }));
        svg.append(g);
      }
    }

    // legend, top right
    let lx = L.left + plotW;
    const legend = svgEl("g", { class: "legend" });
    for (const s of [...this.series].reverse()) {
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      const label = `${s.label}${last !== null ? " " + valueText(last) : ""}`;
      const w = 26 + label.length * 6.4;
      lx -= w;
      legend.append(svgEl("line", { x1: lx, x2: lx + 18, y1: 14 - 4, y2: 14 - 4, stroke: s.color, "stroke-width": 2.5, "stroke-dasharray": s.dashed ? "5 3" : null }));
      legend.append(svgEl("text", { x: lx + 22, y: 14 }, label));
    }
    svg.append(legend);

    if (this.hoverX !== null && this.dragFrom !== null) {
      const a = sx(Math.min(this.dragFrom, this.hoverX)), b = sx(Math.max(this.dragFrom, this.hoverX));
      svg.append(svgEl("rect", { class: "zoom-rect", x: a, y: L.top, width: Math.max(1, b - a), height: plotH }));
    } else if (this.hoverX !== null) this.drawHover(L, plotH);
  }

  onHover(ev) {
    if (!this.scale || !this.L) return;
    const rect = this.svg.getBoundingClientRect();
    const px = ((ev.clientX - rect.left) / rect.width) * this.L.width;
    const { x0, x1 } = this.scale;
    const plotW = this.L.width - this.L.left - this.L.right;
    const x = x0 + ((px - this.L.left) / plotW) * (x1 - x0);
    if (px < this.L.left || px > this.L.left + plotW) { this.hoverX = null; } else { this.hoverX = x; }
    this.render();
  }

  drawHover(L, plotH) {
    const rows = [];
    let nearestX = null;
    for (const s of this.series) {
      let best = null;
      for (const p of s.points) if (best === null || Math.abs(p[0] - this.hoverX) < Math.abs(best[0] - this.hoverX)) best = p;
      if (best) { rows.push([s, best]); if (nearestX === null || Math.abs(best[0] - this.hoverX) < Math.abs(nearestX - this.hoverX)) nearestX = best[0]; }
    }
    if (nearestX === null) return;
    const { sx, sy } = this.scale;
    const g = svgEl("g", { class: "hover", "pointer-events": "none" });
    g.append(svgEl("line", { class: "cursor", x1: sx(nearestX), x2: sx(nearestX), y1: L.top, y2: L.top + plotH }));
    const lines = [`step ${nearestX}`];
    for (const [s, p] of rows) {
      g.append(svgEl("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 4.5, fill: "#fff", stroke: s.color, "stroke-width": 2 }));
      lines.push(`${s.label}: ${valueText(p[1])}${p[0] !== nearestX ? ` (step ${p[0]})` : ""}`);
    }
    const w = 16 + Math.max(...lines.map((t) => t.length)) * 6.6, h = 8 + lines.length * 16;
    let tx = sx(nearestX) + 10;
    if (tx + w > L.width - 4) tx = sx(nearestX) - 10 - w;
    const tip = svgEl("g", { class: "tip", transform: `translate(${tx} ${L.top + 4})` });
    tip.append(svgEl("rect", { width: w, height: h, rx: 4 }));
    lines.forEach((t, i) => tip.append(svgEl("text", { x: 8, y: 17 + i * 16 }, t)));
    g.append(tip);
    this.svg.append(g);
  }
}
