// Evaluated in the dashboard's job page by tests/test_dashboard.py: draws two charts with the
// page's LineChart on known data (a restart included), hovers one, and reports what it drew.
async () => {
  const host = document.createElement("div");
  host.className = "charts";
  host.style.width = "1100px";
  document.querySelector("main").append(host);
  const loss = new LineChart(host, { key: "t-loss", title: "Loss", yLabel: "loss" });
  const pts = [];
  for (let s = 10; s <= 130; s += 10) pts.push([s, 5 - Math.log(s) / 2, 0]);
  for (let s = 100; s <= 220; s += 10) pts.push([s, 5 - Math.log(s) / 2 - 0.05, 1]);
  const evals = [[50, 3.2, 0], [100, 2.9, 0], [150, 2.6, 1], [200, 2.4, 1]];
  loss.update([
    { key: "loss", label: "loss", color: "#2563eb", points: pts },
    { key: "eval_loss", label: "eval_loss", color: "#dc2626", dashed: true, markers: true, points: evals },
  ], 400, [{ step: 100, attempt: 1 }]);
  const lr = new LineChart(host, { key: "t-lr", title: "Learning rate", yLabel: "learning rate" });
  lr.update([{ key: "learning_rate", label: "learning_rate", color: "#059669", points: [[10, 5e-4, 0], [200, 2.5e-4, 0], [400, 1e-6, 0]] }], 400, []);

  // A narrow range of tiny values: the longest tick labels ("4.95e-4").
  const narrow = new LineChart(host, { key: "t-narrow", title: "Learning rate (narrow)", yLabel: "learning rate" });
  narrow.update([{ key: "learning_rate", label: "learning_rate", color: "#059669", points: [[5, 4.95e-4, 0], [10, 4.9e-4, 0], [20, 4.76e-4, 0]] }], 400, []);

  const svg = loss.svg;
  const box = svg.getBoundingClientRect();
  svg.dispatchEvent(new MouseEvent("mousemove", { clientX: box.left + box.width * 0.4, clientY: box.top + 100, bubbles: true }));
  const path = svg.querySelector("path[data-key=loss]");
  const texts = (root, sel) => [...root.querySelectorAll(sel)].map((t) => t.textContent);
  const yTitle = narrow.svg.querySelector("text.axis-label[transform]").getBoundingClientRect();
  const tickLeft = Math.min(...[...narrow.svg.querySelectorAll("text.tick.y")].map((t) => t.getBoundingClientRect().left));
  return {
    lossPoints: +path.dataset.points,
    lossMoves: (path.getAttribute("d").match(/M/g) || []).length,
    evalMarkers: svg.querySelectorAll("[data-markers=eval_loss] circle").length,
    restartMarks: svg.querySelectorAll(".restart line").length,
    lrTicks: texts(lr.svg, "text.tick.y"),
    xTicks: texts(svg, "text.tick.x"),
    tooltip: texts(svg, ".tip text"),
    narrowTicks: texts(narrow.svg, "text.tick.y"),
    yTitleRight: yTitle.right,
    tickLeft,
  };
}
