// The loss curves as an inline SVG: training loss per step, validation loss per evaluation,
// the step where validation turned (overfitting onset) marked. No library: a few paths.
const NS = "http://www.w3.org/2000/svg";
const PAD = { left: 52, right: 16, top: 12, bottom: 40 };

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function ticks(lo, hi, n = 4) {
  const out = [];
  for (let i = 0; i <= n; i++) out.push(lo + ((hi - lo) * i) / n);
  return out;
}

function fmt(v) { return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3); }

// Enough decimals that neighbouring ticks `step` apart never print the same (5.765 vs 5.770).
function tickFmt(step) {
  const digits = Math.min(6, Math.max(0, Math.ceil(-Math.log10(step)) + 1));
  return (v) => v.toFixed(digits);
}

// The drawing's size in its own units: the width it is shown at, so that 11-px labels stay
// 11 px on a phone instead of shrinking with a fixed 640-unit drawing.
function size(svg) {
  const w = Math.round(Math.min(1000, Math.max(300, svg.clientWidth || 640)));
  return [w, w < 500 ? 240 : 300];
}

// series: {train: [[step, loss]...], val: [[step, loss]...]}; marks: {onset, best, total}
export function lossChart(svg, series, marks = {}) {
  const [W, H] = size(svg);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.replaceChildren();
  const points = [...series.train, ...series.val];
  svg.dataset.trainPoints = String(series.train.length);
  svg.dataset.valPoints = String(series.val.length);
  svg.dataset.onset = marks.onset == null ? "" : String(marks.onset);
  if (!points.length) {
    svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "waiting for the first step…"));
    return;
  }
  const maxStep = Math.max(marks.total || 0, ...points.map((p) => p[0]), 1);
  let lo = Math.min(...points.map((p) => p[1])), hi = Math.max(...points.map((p) => p[1]));
  if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
  const x = (s) => PAD.left + (s / maxStep) * (W - PAD.left - PAD.right);
  const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * (H - PAD.top - PAD.bottom);
  const grid = el("g", { class: "grid" });
  const label = tickFmt((hi - lo) / 4);
  for (const v of ticks(lo, hi)) {
    grid.append(el("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }));
    grid.append(el("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" }, label(v)));
  }
  for (const s of ticks(0, maxStep)) {
    grid.append(el("text", { x: x(s), y: H - 22, "text-anchor": "middle" }, String(Math.round(s))));
  }
  grid.append(el("text", { x: (PAD.left + W - PAD.right) / 2, y: H - 4, "text-anchor": "middle", class: "axis" }, "optimizer step"));
  svg.append(grid);
  if (marks.onset != null) {
    const g = el("g", { class: "onset" });
    const at = x(marks.onset), right = at > W / 2; // the label on the side with room for it
    g.append(el("line", { x1: at, x2: at, y1: PAD.top, y2: H - PAD.bottom }));
    g.append(el("text", { x: right ? at - 4 : at + 4, y: PAD.top + 12, "text-anchor": right ? "end" : "start" },
      `overfitting from step ${marks.onset}`));
    svg.append(g);
  }
  for (const [name, rows] of [["train", series.train], ["val", series.val]]) {
    if (!rows.length) continue;
    const d = rows.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    svg.append(el("path", { d, class: `line ${name}` }));
    const dots = el("g", { class: `dots ${name}` });
    for (const p of rows) {
      const c = el("circle", { cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1), r: name === "val" ? 3.5 : 2 });
      c.append(el("title", {}, `${name} loss ${fmt(p[1])} at step ${p[0]}`));
      dots.append(c);
    }
    svg.append(dots);
  }
  if (marks.best != null) {
    const best = series.val.find((p) => p[0] === marks.best);
    if (best) svg.append(el("circle", { cx: x(best[0]), cy: y(best[1]), r: 6, class: "best" }));
  }
}
