// The dashboard's views: Data, New job, Jobs, Job, Compare, Export. Each builds its part of
// the page from the service's API and returns a stop function when it polls.
import { get, post, text, upload } from "/dashboard/api.js";
import { lossChart } from "/dashboard/chart.js";
import { every, failed, h, num, table } from "/dashboard/ui.js";

const FINAL = ["succeeded", "failed", "cancelled"];
const LEAK_CODES = ["duplicate", "leak_exact", "leak_near"];

const where = (i) => (i.line ? `${i.path}:${i.line}` : i.path);
const options = (values, selected, labels = (v) => v) =>
  values.map((v) => h("option", { value: v, selected: v === selected }, labels(v)));
const field = (label, input, hint = null) => h("label.field", {}, h("span", {}, label), input, hint && h("small", {}, hint));

async function fileList() {
  const files = await get("/v1/files?purpose=fine-tune");
  return files.data;
}

// ----------------------------------------------------------------------------- Data

export async function dataView(view) {
  const info = await get("/v1/dashboard/info");
  const model = h("select#data-model", {}, options(info.base_models));
  const train = h("input#train-file", { type: "file", accept: ".jsonl,.json,.csv,.txt", required: true });
  const val = h("input#val-file", { type: "file", accept: ".jsonl,.json,.csv,.txt" });
  const result = h("section#check-result");
  const button = h("button#upload", { type: "submit" }, "Upload and check");
  const form = h("form.card", {
    onsubmit: async (event) => {
      event.preventDefault();
      button.disabled = true;
      result.replaceChildren(h("p.muted", {}, "uploading and checking…"));
      try {
        const t = await upload(train.files[0]);
        const v = val.files.length ? await upload(val.files[0]) : null;
        const q = new URLSearchParams({ model: model.value, ...(v ? { validation_file: v.id } : {}) });
        const report = await get(`/v1/dashboard/files/${t.id}/check?${q}`);
        renderCheck(result, report, t, v);
      } catch (err) {
        result.replaceChildren();
        failed(err);
      } finally {
        button.disabled = false;
      }
    },
  },
  h("h2", {}, "Check your data"),
  h("p.muted", {}, "Chat, prompt/completion, instruction or raw-text examples, one JSON object per line, or CSV. ",
    "Every problem is listed with its line; statistics use the base model's tokenizer."),
  h("div.grid", {}, field("Training file", train), field("Validation file (optional)", val), field("Base model", model)),
  button);
  view.append(form, result);
}

function renderCheck(box, report, trainFile, valFile) {
  const errors = report.issues.filter((i) => i.severity === "error");
  const leaks = report.issues.filter((i) => LEAK_CODES.includes(i.code));
  const verdict = report.ok
    ? h("p.verdict.ok#check-verdict", {}, `✓ the data is valid (${report.n_warnings} warning${report.n_warnings === 1 ? "" : "s"})`)
    : h("p.verdict.bad#check-verdict", {}, `✗ ${report.n_errors} error${report.n_errors === 1 ? "" : "s"}: fix them before training`);
  const problems = report.issues.length
    ? table(["where", "", "code", "message"], report.issues.map((i) =>
        h(`tr.issue.${i.severity}`, {}, h("td.where", {}, where(i)), h("td.nowrap", {}, i.severity), h("td.nowrap", {}, h("code", {}, i.code)),
          h("td", {}, i.message))), "problems stack")
    : h("p.muted", {}, "No problems found.");
  const statRows = [
    ["format", (f) => f.format || "–"], ["examples", (f) => num(f.examples)],
    ["tokens", (f) => (f.stats ? num(f.stats.tokens) : "skipped (errors)")],
    ["loss-bearing tokens", (f) => (f.stats ? num(f.stats.loss_tokens) : "–")],
    ["length p50 / p90 / p99", (f) => (f.stats ? `${f.stats.p50} / ${f.stats.p90} / ${f.stats.p99}` : "–")],
    ["length max", (f) => (f.stats ? num(f.stats.max) : "–")],
    ["longer than max length", (f) => (f.stats ? `${f.stats.too_long} (${num(f.stats.tokens_cut)} tokens cut)` : "–")],
  ];
  const stats = table(["", ...report.files.map((f) => `${f.role}: ${f.path}`)],
    statRows.map(([label, cell]) => [label, ...report.files.map(cell)]), "stats");
  const examples = report.examples.map((ex) => h("figure.example", {},
    h("figcaption", {}, `${trainFile.filename}:${ex.line} · ${ex.format} · ${ex.tokens} tokens · ${ex.loss_tokens} loss-bearing`),
    h("pre", {}, ex.runs.map((r) => (r.loss ? h("mark", {}, r.text.replace(/\n/g, "↵\n")) : r.text)))));
  const next = `#new?file=${encodeURIComponent(trainFile.id)}${valFile ? `&val=${encodeURIComponent(valFile.id)}` : ""}` +
    `&model=${encodeURIComponent(report.model)}`;
  box.replaceChildren(...[
    verdict,
    h("h3", {}, "Problems"), problems,
    h("h3", {}, `Token statistics (${report.model}, max length ${report.max_length ?? "–"})`),
    report.files.some((f) => f.stats) ? stats : h("p.muted", {}, "Computed once the errors are fixed."),
    h("h3", {}, "Duplicates and leakage"),
    leaks.length ? h("ul.leaks", {}, leaks.map((i) => h("li", {}, h("b", {}, where(i)), `: ${i.message}`)))
      : h("p.muted", {}, report.ok ? "No duplicates; no validation example leaks from training." : "Checked once the file parses."),
    report.examples.length ? h("h3", {}, "Two examples as training sees them") : null,
    report.examples.length ? h("p.legend", {}, h("mark", {}, "trained on (loss-bearing)"), " context (no loss)") : null,
    examples,
    errors.length ? null : h("p", {}, h("a.button#to-new-job", { href: next }, "Start a job with this data →")),
  ].flat().filter(Boolean));
}

// ----------------------------------------------------------------------------- New job

function jobBody(form) {
  const v = (name) => form.elements[name].value.trim();
  const hyper = {};
  if (v("n_epochs")) hyper.n_epochs = Number(v("n_epochs"));
  if (v("batch_size")) hyper.batch_size = Number(v("batch_size"));
  if (v("lr_mult")) hyper.learning_rate_multiplier = Number(v("lr_mult"));
  const settings = {};
  if (v("method") !== "auto") settings["train.method"] = v("method");
  if (v("time_budget")) settings["train.time_budget"] = v("time_budget");
  for (const line of v("overrides").split("\n").map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`override "${line}": expected key=value, e.g. train.lr=1e-4`);
    settings[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  const body = { model: v("model"), training_file: v("training_file"), hyperparameters: hyper };
  if (v("validation_file")) body.validation_file = v("validation_file");
  if (v("suffix")) body.suffix = v("suffix");
  if (Object.keys(settings).length) body.settings = settings;
  return body;
}

export async function newJobView(view, _arg, params) {
  const [info, files] = await Promise.all([get("/v1/dashboard/info"), fileList()]);
  if (!files.length) {
    view.append(h("p.card", {}, "Upload a training file first: ", h("a", { href: "#data" }, "Data")));
    return;
  }
  const fileLabel = (id) => { const f = files.find((x) => x.id === id); return f ? `${f.filename} (${f.id})` : id; };
  const ids = files.map((f) => f.id);
  const plan = h("section#plan");
  const estimate = h("button#estimate", { type: "button" }, "Estimate duration");
  const startButton = h("button#start-job", { type: "submit" }, "Start job");
  const form = h("form.card#new-job", {
    onsubmit: async (event) => {
      event.preventDefault();
      startButton.disabled = true;
      try {
        const job = await post("/v1/fine_tuning/jobs", jobBody(form));
        location.hash = `#job/${job.id}`;
      } catch (err) { failed(err); } finally { startButton.disabled = false; }
    },
  },
  h("h2", {}, "New fine-tuning job"),
  h("div.grid", {},
    field("Base model", h("select", { name: "model" }, options(info.base_models, params.get("model")))),
    field("Training file", h("select", { name: "training_file" }, options(ids, params.get("file") || ids[0], fileLabel))),
    field("Validation file", h("select", { name: "validation_file" },
      h("option", { value: "" }, "none: hold out a seeded split"), options(ids, params.get("val"), fileLabel))),
    field("Method", h("select", { name: "method" }, options(["auto", "lora", "full"], "auto")),
      "auto: LoRA from 50M parameters, else full"),
    field("Time budget", h("input", { name: "time_budget", placeholder: "e.g. 10m or 1h", autocomplete: "off" }),
      "train.time_budget: the plan fits the run into it"),
    field("Suffix", h("input", { name: "suffix", placeholder: "e.g. support", pattern: "[A-Za-z0-9_\\-]{1,64}" }))),
  h("details", {}, h("summary", {}, "Overrides"),
    h("div.grid", {},
      field("Epochs", h("input", { name: "n_epochs", type: "number", min: 1, max: 50, placeholder: "auto" })),
      field("Batch size", h("input", { name: "batch_size", type: "number", min: 1, max: 256, placeholder: "auto" })),
      field("LR multiplier", h("input", { name: "lr_mult", type: "number", step: "any", min: 0, placeholder: "auto" }))),
    field("More settings, key=value per line", h("textarea", { name: "overrides", rows: 3, placeholder: "lora.r=8\ntrain.lr=5e-4" }),
      `allowed: ${info.setting_keys.join(", ")}`)),
  h("div.actions", {}, estimate, startButton),
  plan);
  estimate.addEventListener("click", async () => {
    estimate.disabled = true;
    plan.replaceChildren(h("p.muted", {}, "planning and timing a few real steps (a dry run)…"));
    try { renderPlan(plan, await post("/v1/dashboard/plan", jobBody(form))); }
    catch (err) { plan.replaceChildren(); failed(err); }
    finally { estimate.disabled = false; }
  });
  view.append(form);
}

function renderPlan(box, p) {
  box.replaceChildren(
    h("p.verdict#plan-estimate", {}, `Estimated training time ${p.estimate || "–"}: ${p.total_steps} steps of ${p.batch_size} examples`,
      ` at ${num(p.step_s, 2)} s per step (measured), ${p.method}, ${num(p.epochs, 2)} epochs`),
    table(["setting", "value", "why"], p.choices.map((c) => h("tr", {}, h("td.nowrap", {}, h("code", {}, c.field)),
      h("td", {}, String(c.value)), h("td", {}, c.reason))), "choices stack"),
    h("p.muted", {}, `${p.train_examples} training / ${p.val_examples} validation examples, ${num(p.train_tokens)} tokens per epoch ` +
      `(${num(p.loss_tokens)} loss-bearing); learning rate ${p.lr}, max length ${p.max_length}.`));
}

// ----------------------------------------------------------------------------- Jobs

export async function jobsView(view) {
  const jobs = await get("/v1/fine_tuning/jobs?limit=100");
  view.append(h("section.card", {}, h("h2", {}, "Jobs"),
    jobs.data.length ? table(["job", "status", "base model", "tuned model", "created"], jobs.data.map((j) => [
      h("a", { href: `#job/${j.id}` }, j.id), h(`span.badge.${j.status}`, {}, j.status), j.model,
      j.fine_tuned_model || "–", new Date(j.created_at * 1000).toLocaleString()]), "jobs stack")
      : h("p", {}, "No jobs yet. ", h("a", { href: "#new" }, "Start one"))));
}

// ----------------------------------------------------------------------------- Job

export async function jobView(view, id) {
  const status = h("span.badge#job-status", {}, "…");
  const controls = Object.fromEntries(["pause", "resume", "cancel"].map((verb) => [verb,
    h(`button.${verb}#${verb}`, { type: "button", onclick: () => control(verb) }, verb[0].toUpperCase() + verb.slice(1))]));
  const progress = h("p#progress.muted");
  const chart = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  chart.id = "loss-chart";
  const verdict = h("div#verdict");
  const checkpoints = h("div#checkpoints");
  const events = h("ol#events");
  const links = h("p.links");
  view.append(
    h("section.card", {}, h("h2", {}, `Job ${id} `, status), h("p#tuned-model"), progress,
      h("div.actions", {}, Object.values(controls)), links),
    h("section.card", {}, h("h3", {}, "Loss"), h("p.legend", {}, h("span.key.train", {}, "training"), h("span.key.val", {}, "validation"),
      h("span.key.onset", {}, "overfitting onset")), chart, verdict),
    h("section.card", {}, h("h3", {}, "Checkpoints"), checkpoints),
    h("section.card", {}, h("h3", {}, "Events"), events));

  async function control(verb) {
    try { await post(`/v1/fine_tuning/jobs/${id}/${verb}`); await refresh(); } catch (err) { failed(err); }
  }

  let done = false;
  const feed = eventFeed(id);
  async function refresh() {
    const [run, listed, ck] = await Promise.all([get(`/v1/dashboard/jobs/${id}`), feed(),
      get(`/v1/fine_tuning/jobs/${id}/checkpoints?limit=100`)]);
    const job = run.job;
    status.textContent = job.status;
    status.className = `badge ${job.status}`;
    controls.pause.disabled = !["queued", "running"].includes(job.status);
    controls.resume.disabled = job.status !== "paused";
    controls.cancel.disabled = FINAL.includes(job.status);
    document.getElementById("tuned-model").textContent = job.fine_tuned_model ? `Tuned model: ${job.fine_tuned_model}`
      : `Base model: ${job.model}`;
    const last = run.curve.train[run.curve.train.length - 1];
    progress.textContent = [last ? `step ${last[0]}${run.total_steps ? ` of ${run.total_steps}` : ""}` : "not started",
      job.trained_tokens ? `${num(job.trained_tokens)} tokens trained` : null,
      job.estimated_finish && !FINAL.includes(job.status) ? `estimated finish ${new Date(job.estimated_finish * 1000).toLocaleTimeString()}` : null,
      job.error ? `error: ${job.error.message}` : null].filter(Boolean).join(" · ");
    const v = run.verdict;
    lossChart(chart, run.curve, { onset: v && v.onset_step, best: v && v.best_step, total: run.total_steps });
    verdict.replaceChildren(...verdictLines(run));
    checkpoints.replaceChildren(ck.data.length ? table(["step", "train loss", "validation loss", "model name"], ck.data.map((c) => [
      c.step_number, num(c.metrics.train_loss), num(c.metrics.valid_loss), h("code", {}, c.fine_tuned_model_checkpoint)]),
      "checkpoints stack")
      : h("p.muted", {}, "none yet"));
    events.replaceChildren(...listed.map((e) =>
      h(`li.${e.level}`, {}, h("time", {}, new Date(e.created_at * 1000).toLocaleTimeString()), " ", e.message)));
    links.replaceChildren(...(job.status === "succeeded" ? [
      h("a.button#to-compare", { href: `#compare/${id}` }, "Compare with the base model"), " ",
      h("a.button#to-play", { href: `#play?model=${encodeURIComponent(job.fine_tuned_model)}` }, "Try it"), " ",
      h("a.button#to-export", { href: `#export/${id}` }, "Export")] : []));
    done = FINAL.includes(job.status);
  }

  // Once the job has ended, one more refresh: the last event or checkpoint may land just after
  // the status that ended it.
  let stop = () => {}, ended = false;
  stop = every(1000, async () => { await refresh(); if (done && ended) stop(); ended = done; });
  return () => stop();
}

// A job's events, newest first, without the per-step metrics ones (the chart draws those). Each
// call reads only what is new: pages back from the newest until an event it already has, so the
// plan's events at the start of a long job are never pushed out by thousands of steps.
function eventFeed(id) {
  const seen = new Set();
  let shown = [], last = Promise.resolve(shown);
  const read = async () => {
    const fresh = [];
    for (let after = null; ;) {
      const page = await get(`/v1/fine_tuning/jobs/${id}/events?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ""}`);
      const known = page.data.findIndex((e) => seen.has(e.id));
      fresh.push(...(known < 0 ? page.data : page.data.slice(0, known)));
      if (known >= 0 || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    for (const e of fresh) seen.add(e.id);
    shown = [...fresh.filter((e) => e.type !== "metrics"), ...shown];
    return shown;
  };
  // One read at a time (a button's refresh can meet the poll's): two would both add the same events.
  return () => (last = last.then(read, read));
}

function verdictLines(run) {
  const v = run.verdict, out = [];
  if (v && v.status !== "unknown") {
    const tone = v.status === "healthy" ? "ok" : v.status === "underfitting" ? "warn" : "bad";
    out.push(h(`p.verdict.${tone}#curve-verdict`, {}, `Curves: ${v.message}`));
    if (v.recommended && v.recommended.step != null) out.push(h("p.muted", {}, `Recommended: step ${v.recommended.step}: ${v.recommended.reason}`));
    if (v.suggestions && v.suggestions.length) out.push(h("p.muted", {}, `Try: ${v.suggestions.join("; ")}`));
  }
  if (run.eval && run.eval.ship) out.push(h(`p.verdict.${run.eval.ship.ship ? "ok" : "bad"}`, {}, run.eval.ship.line));
  return out;
}

// ----------------------------------------------------------------------------- Compare

// Metrics always with three decimals: an accuracy of 1 reads "1.000 [1.000, 1.000]" beside "0.850 [...]".
const fixed3 = (v) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(3) : "–");
const interval = (i) => (i ? `${fixed3(i.mean)} [${fixed3(i.low)}, ${fixed3(i.high)}]` : "–");

export async function compareView(view, id) {
  const box = h("section.card#compare");
  view.append(box);
  let stop = () => {};
  const render = async () => {
    const run = await get(`/v1/dashboard/jobs/${id}`);
    const task = run.tasks.eval;
    if (task && task.state === "running") {
      box.replaceChildren(h("h2", {}, "Compare"), h("p.muted", {}, "evaluating base, prompted and tuned on the test file…"),
        h("pre.log", {}, task.log.join("\n")));
      return false;
    }
    box.replaceChildren(h("h2", {}, `Compare: ${run.job.fine_tuned_model || id}`));
    if (task && task.state === "failed") box.append(h("p.error", {}, `The evaluation failed: ${task.error}`));
    if (run.eval) box.append(...renderEval(run.eval, id));
    box.append(await evalForm(id, run));
    return true;
  };
  stop = every(2000, async () => { if (await render()) stop(); });
  return () => stop();
}

async function evalForm(id, run) {
  const files = await fileList();
  const last = run.eval && run.eval.test_file; // the file evaluated last, chosen again by default
  const test = h("select#test-file", {}, options(files.map((f) => f.id), last ? last.id : null,
    (fid) => { const f = files.find((x) => x.id === fid); return `${f.filename} (${fid})`; }));
  const limit = h("input#eval-limit", { type: "number", min: 1, placeholder: "all" });
  const go = h("button#run-eval", { type: "submit", disabled: run.job.status !== "succeeded" }, run.eval ? "Evaluate again" : "Evaluate");
  return h("form.eval-form", {
    onsubmit: async (e) => {
      e.preventDefault();
      go.disabled = true;
      try {
        await post(`/v1/dashboard/jobs/${id}/eval`, { test_file: test.value, ...(limit.value ? { limit: Number(limit.value) } : {}) });
        location.hash = `#compare/${id}?t=${Date.now()}`; // re-enter the view: it polls the running evaluation
      } catch (err) { failed(err); go.disabled = false; }
    },
  }, h("h3", {}, "Held-out test"), h("p.muted", {}, "Upload a test file on the Data page (never one trained on); ",
    "the tuned model is compared with the base model and a prompt-engineered baseline."),
  h("div.grid", {}, field("Test file", test), field("Examples (limit)", limit)), go);
}

// Held-out raw text (eval/text.py): loss per token under base and tuned, nothing generated.
function renderTextEval(ev) {
  const rows = Object.entries(ev.systems).map(([name, s]) => h("tr", {}, h("td.name", {}, name),
    [fixed3(s.loss), num(s.perplexity, 2), fixed3(s.token_accuracy), num(s.tokens), num(s.windows)].map((c) => h("td", {}, c))));
  return [
    h(`p.verdict.${ev.ship && ev.ship.ship ? "ok" : "bad"}#ship`, {}, ev.ship ? ev.ship.line : ""),
    ev.verdict ? h("p.muted", {}, `Curves: ${ev.verdict.message}`) : null,
    h("p.muted", {}, `${ev.examples} held-out documents${ev.test_file ? ` from ${ev.test_file.filename}` : ""}; every token scored.`),
    table(["system", "held-out loss", "perplexity", "token accuracy", "tokens", "windows"], rows, "systems stack"),
  ].filter(Boolean);
}

function renderEval(ev, id) {
  if (ev.kind === "text") return renderTextEval(ev);
  const metric = ev.main_metric;
  const cl = ev.classical; // closed-label tasks: TF-IDF + logistic regression on the training file
  const row = (name, ...cells) => h("tr", {}, h("td.name", {}, name), cells.map((c) => h("td", {}, c)));
  const systems = table(["system", `${metric} [95% interval]`, "held-out loss", "token accuracy"], [
    ...Object.entries(ev.systems).map(([name, s]) => row(name, interval(s.main), fixed3(s.loss), fixed3(s.token_accuracy))),
    ...(cl ? [row(`${cl.name} (classical)`, interval(cl.main), "–", "–")] : [])], "systems stack");
  const diffs = table(["tuned minus", "difference [95% interval]", "beyond the interval"], [
    ...Object.entries(ev.comparison.diff || {}).map(([name, d]) => row(name, interval(d), ev.comparison.beyond_interval[name] ? "yes" : "no")),
    ...(cl ? [row(cl.name, interval(cl.diff_tuned_minus_classical), cl.diff_tuned_minus_classical.low > 0 ? "yes" : "no")] : [])],
  "diffs stack");
  const against = ev.comparison.flips && ev.comparison.flips.against;
  const flipped = (kind, title) => {
    const rows = ev.flipped[kind] || [];
    return [h("h4", {}, `${title} (${rows.length})`), rows.length ? table(["where", "prompt", "reference", against, "tuned"],
      rows.map((c) => h("tr", {}, h("td.where", {}, c.where), [c.prompt, c.reference, c.answers[against], c.answers.tuned]
        .map((t) => h("td", {}, t)))), "flips stack") : h("p.muted", {}, "none")];
  };
  const open = h("button#open-report", { type: "button", disabled: !ev.has_report }, "Open the HTML report");
  open.addEventListener("click", async () => {
    try {
      const html = await text(`/v1/dashboard/jobs/${id}/report`);
      const url = URL.createObjectURL(new Blob([html], { type: "text/html" }));
      window.open(url, "_blank", "noopener");
    } catch (err) { failed(err); }
  });
  return [
    h(`p.verdict.${ev.ship && ev.ship.ship ? "ok" : "bad"}#ship`, {}, ev.ship ? ev.ship.line : ""),
    ev.verdict ? h("p.muted", {}, `Curves: ${ev.verdict.message}`) : null,
    h("p.muted", {}, `${ev.examples} test examples${ev.test_file ? ` from ${ev.test_file.filename}` : ""}; main metric: ${metric}.`),
    systems, h("h3", {}, "Tuned against each baseline"), diffs,
    cl ? h("p#classical-line", {}, `Classical baseline (${cl.train_examples} training examples, ${num(cl.seconds, 1)} s): ${cl.line}`) : null,
    h("h3", {}, against ? `Flipped examples (against ${against})` : "Flipped examples"),
    ...flipped("fixed", "fixed by tuning"), ...flipped("broken", "broken by tuning"),
    h("p", {}, open),
  ].filter(Boolean);
}

// ----------------------------------------------------------------------------- Export

export async function exportView(view, id) {
  const box = h("section.card#export");
  view.append(box);
  let stop = () => {};
  const render = async () => {
    const run = await get(`/v1/dashboard/jobs/${id}`);
    const isLora = (run.summary.method || "") === "lora";
    box.replaceChildren(h("h2", {}, `Export ${run.job.fine_tuned_model || id}`),
      h("p.muted", {}, "Each export is checked against the run (rendering, end-of-turn token, logits) before it is kept."));
    let busy = false;
    for (const [fmt, info] of Object.entries(run.exports)) {
      const task = run.tasks[`export:${fmt}`];
      busy = busy || (task && task.state === "running");
      const button = h(`button#export-${fmt}`, {
        type: "button", disabled: run.job.status !== "succeeded" || (task && task.state === "running") || (fmt === "adapter" && !isLora),
        onclick: async () => {
          try { await post(`/v1/dashboard/jobs/${id}/export`, { format: fmt }); stop(); stop = every(2000, async () => { if (await render()) stop(); }); }
          catch (err) { failed(err); }
        },
      }, info.files.length ? `Export ${fmt} again` : `Export ${fmt}`);
      box.append(h(`div.export.${fmt}`, {}, h("h3", {}, fmt), button,
        task ? h(`p.state.${task.state}`, {}, task.state === "failed" ? `failed: ${task.error}` : task.state) : null,
        fmt === "adapter" && !isLora ? h("p.muted", {}, "a full fine-tune has no adapter: export merged or GGUF") : null,
        info.files.length ? h("p", {}, "In ", h("code", {}, info.path), ": ", info.files.join(", ")) : null,
        ...(fmt === "adapter" && !isLora ? [] : commandBlocks(info.commands))));
    }
    return !busy;
  };
  stop = every(2000, async () => { if (await render()) stop(); });
  return () => stop();
}

// The export command (what the button runs), then how to run the result elsewhere, one block
// each so a wrapped line is never mistaken for the next command.
function commandBlocks([make, ...run]) {
  return [h("p.caption", {}, "Made with:"), h("pre.command", {}, make),
    h("p.caption", {}, "Run it elsewhere (copy the folder there first):"), ...run.map((c) => h("pre.command.run", {}, c))];
}
