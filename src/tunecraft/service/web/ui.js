// Small DOM helpers the views share: element building, the error banner, number formats.
import { AuthError } from "/dashboard/api.js";

// h("tag.class#id", {attr: value, onclick: fn}, child, ...): children are nodes or text.
export function h(spec, attrs = {}, ...children) {
  const [tagAndClasses, id] = spec.split("#");
  const [tag, ...classes] = tagAndClasses.split(".");
  const node = document.createElement(tag || "div");
  if (classes.length) node.className = classes.join(" ");
  if (id) node.id = id;
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function flash(message) {
  const box = document.getElementById("flash");
  box.textContent = message || "";
  box.hidden = !message;
}

// A failed call: a refused key asks for the key again, anything else shows its message.
export function failed(err) {
  if (err instanceof AuthError) window.dispatchEvent(new CustomEvent("tunecraft:auth", { detail: err.message }));
  else flash(err.message || String(err));
}

export function num(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return typeof v === "number" ? (Number.isInteger(v) ? v.toLocaleString("en") : v.toFixed(digits)) : String(v);
}

export function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  if (s < 90) return `${s} s`;
  const m = Math.floor(s / 60);
  return m < 90 ? `${m} min ${String(s % 60).padStart(2, "0")} s` : `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

// A table; each cell carries its column's header (data-label) so that a table with the class
// "stack" can show its rows as labelled blocks on a phone instead of scrolling sideways.
export function table(headers, rows, cls = "") {
  const body = rows.map((r) => (r instanceof Node ? r : h("tr", {}, r.map((c) => h("td", {}, c)))));
  for (const tr of body) {
    [...tr.children].forEach((td, i) => { if (headers[i] && !td.dataset.label) td.dataset.label = headers[i]; });
  }
  return h("div.scroll", {}, h(`table${cls ? "." + cls.split(" ").join(".") : ""}`, {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, body)));
}

// Re-runs fn every `ms` until stop() is called; returns stop.
export function every(ms, fn) {
  let timer = null, stopped = false;
  const tick = async () => {
    if (stopped) return;
    try { await fn(); } catch (err) { failed(err); }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}
