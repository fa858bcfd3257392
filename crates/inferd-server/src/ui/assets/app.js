// inferd console. Our own small script: no framework, no remote code. Every text from the
// server (model, route and tensor names, reasons) goes into the page with textContent or
// as an attribute value, never as markup, so a hostile name shows as text.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 2000;
let token = null; // the admin token: kept in memory only, never written back to the page
let timer = null;
let page = null;

// ---- DOM helpers -------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}
function fmt(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return "\u2013";
  if (typeof x !== "number") return String(x);
  const d = digits === undefined ? (Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 2) : digits;
  return x.toFixed(d);
}
function secs(x) { return x < 1 ? (x * 1e3).toFixed(x < 0.01 ? 2 : 0) + " ms" : x.toFixed(2) + " s"; }
function pct(x) { return x === null || x === undefined ? "\u2013" : (100 * x).toFixed(1) + "%"; }
function stateChip(s) { return el("span", { class: "state " + s, text: s }); }
function table(head, rows, caption) {
  return el("div", { class: "scroll" }, el("table", {},
    caption ? el("caption", { class: "muted", text: caption }) : null,
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c)))))));
}
function replace(node, ...children) { node.replaceChildren(...children.flat().filter((c) => c)); }

async function getJSON(path) {
  const r = await fetch(path, { headers: { accept: "application/json" }, cache: "no-store" });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.status + " " + r.statusText);
  return body;
}

// ---- charts (SVG drawn here) ----------------------------------------------------------------
// A line chart of `series` (each a list of numbers over the points `ts`, seconds).
function lineChart(label, ts, series, unit) {
  const W = 320, H = 120, L = 36, B = 16, T = 8;
  const s = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  const all = series.flatMap((x) => x.values);
  const max = Math.max(1e-9, ...all) * 1.1;
  const t1 = ts.length ? ts[ts.length - 1] : 0;
  const t0 = Math.min(ts.length ? ts[0] : 0, t1 - 60);
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - 4);
  const y = (v) => H - B - (v / max) * (H - B - T);
  s.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  s.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  const top = svg("text", { x: 2, y: T + 8 }); top.textContent = fmt(max / 1.1) + (unit || "");
  const zero = svg("text", { x: 2, y: H - B }); zero.textContent = "0";
  const span = svg("text", { x: L, y: H - 2 });
  span.textContent = "last " + Math.round((t1 - t0) / 60) + " min";
  s.append(top, zero, span);
  series.forEach((ser, i) => {
    if (!ts.length) return;
    const d = ser.values.map((v, k) => (k ? "L" : "M") + x(ts[k]).toFixed(1) + " " + y(v).toFixed(1)).join(" ");
    const p = svg("path", { class: "s" + i, d, "data-series": ser.name });
    s.append(p);
  });
  const legend = el("div", { class: "legend" }, series.map((ser, i) => el("span", { class: "k" + i, text: ser.name })));
  return el("figure", { class: "card" }, el("h3", { text: label }), s, legend);
}

function seriesCharts(points) {
  const ts = points.map((p) => p.t);
  const get = (k) => points.map((p) => p[k]);
  return el("div", { class: "cards" },
    lineChart("Requests per second", ts, [{ name: "requests/s", values: get("rps") }]),
    lineChart("Latency", ts, [{ name: "p50 ms", values: get("p50_ms") }, { name: "p99 ms", values: get("p99_ms") }], " ms"),
    lineChart("Errors per second", ts, [{ name: "errors/s", values: get("errors") }]),
    lineChart("Queue depth", ts, [{ name: "queued", values: get("queue") }]));
}

// Bars: `ref` filled, `cur` outlined over them, both as shares; `labels` under the bars.
function distChart(label, labels, ref, cur) {
  const W = 320, H = 110, B = 14, T = 4;
  const s = svg("svg", { class: "bars", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  const n = Math.max(ref.length, cur.length, 1);
  const norm = (a) => { const t = a.reduce((x, y) => x + y, 0) || 1; return a.map((v) => v / t); };
  const r = norm(ref), c = norm(cur);
  const max = Math.max(1e-9, ...r, ...c);
  const w = W / n;
  for (let i = 0; i < n; i++) {
    const h = ((r[i] || 0) / max) * (H - B - T);
    s.append(svg("rect", { class: "ref", x: i * w + 1, y: H - B - h, width: Math.max(1, w - 2), height: h }));
  }
  const d = c.map((v, i) => { const yy = H - B - (v / max) * (H - B - T);
    return (i ? "L" : "M") + (i * w) + " " + yy + " L" + ((i + 1) * w) + " " + yy; }).join(" ");
  if (c.length) s.append(svg("path", { class: "cur", d }));
  if (labels && labels.length) {
    const first = svg("text", { x: 0, y: H - 2 }); first.textContent = labels[0];
    const last = svg("text", { x: W - 60, y: H - 2 }); last.textContent = labels[labels.length - 1];
    s.append(first, last);
  }
  return s;
}

function barChart(label, items) {
  const W = 320, H = 110, B = 14, T = 4;
  const s = svg("svg", { class: "bars", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  const max = Math.max(1, ...items.map((i) => i.count));
  const w = W / Math.max(1, items.length);
  items.forEach((it, i) => {
    const h = (it.count / max) * (H - B - T);
    s.append(svg("rect", { class: "bar", x: i * w + 2, y: H - B - h, width: Math.max(1, w - 4), height: h }));
    const t = svg("text", { x: i * w + 2, y: H - 2 }); t.textContent = String(it.size); s.append(t);
  });
  return s;
}

// ---- actions -----------------------------------------------------------------------------
function confirmAction(text) {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  const reason = document.getElementById("confirm-reason");
  reason.value = "";
  return new Promise((resolve) => {
    const done = (ok) => { dlg.close(); cleanup(); resolve(ok ? { reason: reason.value } : null); };
    const onSubmit = (e) => { e.preventDefault(); done(true); };
    const onCancel = () => done(false);
    const onClose = () => { cleanup(); resolve(null); };
    const cancel = document.getElementById("confirm-cancel");
    const form = document.getElementById("confirm-form");
    function cleanup() {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dlg.removeEventListener("cancel", onClose);
    }
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dlg.addEventListener("cancel", onClose);
    dlg.showModal();
    reason.focus();
  });
}

async function routeAction(route, action, out) {
  const ok = await confirmAction(`${action} route "${route}"?`);
  if (!ok) return;
  routeMessages.delete(route);
  replace(out, el("div", { class: "msg", role: "status", text: `${action}: sending` }));
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  try {
    const r = await fetch("v2/routes/" + encodeURIComponent(route) + "/" + action, {
      method: "POST", headers, body: JSON.stringify({ reason: ok.reason || "from the console" }),
    });
    const body = await r.json().catch(() => ({}));
    const msg = el("div", { class: "msg " + (r.ok ? "ok" : "bad"), role: "status",
      text: r.ok ? `${action}: done (state ${body.state})` : `${action} refused (${r.status}): ${body.error || ""}` });
    routeMessages.set(route, msg);
    replace(out, msg.cloneNode(true));
  } catch (e) {
    const msg = el("div", { class: "msg bad", role: "status", text: `${action} failed: ${e.message}` });
    routeMessages.set(route, msg);
    replace(out, msg.cloneNode(true));
  }
  refresh();
}

// ---- pages -------------------------------------------------------------------------------
function versionsCell(versions) {
  return el("div", {}, versions.map((v) => el("div", {},
    stateChip(v.state), v.version ? "v" + v.version + " " : "",
    v.reason ? el("span", { class: "reason", text: v.reason }) : null,
    v.phases && v.phases.length ? el("span", { class: "muted",
      text: " load " + v.phases.map((p) => p.name + " " + secs(p.secs)).join(", ") }) : null)));
}

const pages = {
  async overview(root, _arg, live) {
    const d = await getJSON("ui/api/overview");
    if (!live()) return;
    const models = d.models.map((m) => [
      el("a", { href: "#/model/" + encodeURIComponent(m.name), text: m.name }),
      versionsCell(m.versions),
      fmt(m.now ? m.now.rps : null), fmt(m.now ? m.now.p50_ms : null), fmt(m.now ? m.now.p99_ms : null),
      fmt(m.now ? m.now.errors : null), fmt(m.now ? m.now.queue : null, 0),
    ]);
    replace(root,
      el("h1", { text: "Overview" }),
      el("section", { "aria-label": "Server" }, el("div", { class: "cards" },
        el("div", { class: "card" }, el("h2", { text: "Server" }),
          el("div", { class: "big " + (d.server.ready ? "ok" : "bad"), text: d.server.ready ? "ready" : (d.server.live ? "live, not ready" : "not live") }),
          el("div", { class: "muted", text: "inferd " + d.server.version + " \u00b7 " + d.server.inflight + " requests in flight" })),
        el("div", { class: "card" }, el("h2", { text: "Models" }),
          el("div", { class: "big", text: String(d.models.length) }),
          el("div", { class: "muted", text: d.models.filter((m) => m.versions.some((v) => v.state === "READY")).length + " ready" })),
        el("div", { class: "card" }, el("h2", { text: "Routes" }),
          el("div", { class: "big", text: String(d.routes.length) }),
          el("div", {}, d.routes.map((r) => el("span", { class: "state " + r.state, text: r.name + ": " + r.state })))))),
      el("section", { "aria-label": "Live charts" }, el("h2", { text: "Last 15 minutes" }), seriesCharts(d.series)),
      el("section", { "aria-label": "Models" }, el("h2", { text: "Models" }),
        table(["Model", "Versions", "req/s", "p50 ms", "p99 ms", "errors/s", "queue"], models)));
  },

  async model(root, name, live) {
    const d = await getJSON("ui/api/models/" + encodeURIComponent(name));
    if (!live()) return;
    let shell = root.querySelector("#model-page");
    if (!shell || shell.dataset.model !== name) {
      // Built once per model: the live part below is redrawn, the test form and the open
      // configuration keep their state.
      shell = el("div", { id: "model-page" },
        el("h1", {}, "Model ", el("span", { text: d.name })),
        el("p", {}, el("a", { href: "#/", text: "\u2190 Overview" })),
        el("div", { id: "model-live" }),
        el("section", {}, el("h2", { text: "Test request" }), testForm(d)),
        el("section", {}, el("h2", { text: "Configuration" }),
          el("details", {}, el("summary", { text: "config of the latest ready version" }),
            el("pre", { id: "model-config" }))));
      shell.dataset.model = name;
      replace(root, shell);
    }
    shell.querySelector("#model-config").textContent = JSON.stringify(d.config, null, 2);
    const drift = d.drift.map((v) => el("section", {},
      el("h3", { text: "Drift of version " + v.version }),
      v.error ? el("p", { class: "muted", text: v.error }) : driftView(v)));
    const batches = d.batches.map((b) => el("div", { class: "card" },
      el("h3", { text: "Batch sizes, version " + b.version }),
      b.sizes.length ? barChart("Executions per batch size, version " + b.version, b.sizes) : el("p", { class: "muted", text: "no executions yet" })));
    const stats = (d.statistics.model_stats || []).map((s) => [
      s.version, String(s.inference_count), String(s.execution_count),
      String(s.inference_stats.success.count), String(s.inference_stats.fail.count),
      fmt(s.inference_stats.success.count ? s.inference_stats.success.ns / s.inference_stats.success.count / 1e6 : null) ]);
    replace(shell.querySelector("#model-live"),
      el("section", {}, el("h2", { text: "Versions" }), versionsCell(d.versions)),
      el("section", {}, el("h2", { text: "Last 15 minutes" }), seriesCharts(d.series)),
      el("section", {}, el("h2", { text: "Statistics" }),
        table(["Version", "inferences", "executions", "succeeded", "failed", "mean ms"], stats),
        el("div", { class: "cards" }, batches)),
      el("section", {}, el("h2", { text: "Drift" }), drift));
  },

  async routes(root, _arg, live) {
    const d = await getJSON("ui/api/routes");
    if (!live()) return;
    const cards = d.routes.map((r, i) => routeCard(r, d.token_required, i));
    replace(root, el("h1", { text: "Routes" }),
      d.token_required && !token ? el("p", { class: "muted", text: "Read-only: enter the admin token above to act on routes." }) : null,
      cards.length ? cards : el("p", { class: "muted", text: "No routes." }));
  },

  async autoscaling(root, _arg, live) {
    const d = await getJSON("ui/api/autoscaling");
    if (!live()) return;
    replace(root, el("h1", { text: "Autoscaling" }),
      d.models.length ? table(["Model", "demand req/s", "capacity req/s", "utilisation", "forecast peak req/s", "horizon s"],
        d.models.map((m) => [m.model, fmt(m.demand), fmt(m.capacity), pct(m.utilisation),
          fmt(m.forecast) + (m.forecast_ready ? "" : " (learning)"), fmt(m.horizon_secs, 0)]))
        : el("p", { class: "muted", text: "No model has served requests yet." }));
  },

  async llm(root, _arg, live) {
    const d = await getJSON("ui/api/llm");
    if (!live()) return;
    replace(root, el("h1", { text: "LLM" }),
      d.models.length ? table(["Model", "running", "waiting", "KV cache", "prefix hit rate", "preemptions", "TTFT ms", "inter-token ms", "tokens in / out"],
        d.models.map((m) => [m.model + " v" + m.version, String(m.running), String(m.waiting),
          pct(m.kv_usage) + " (" + m.kv_blocks_used + "/" + m.kv_blocks_total + " blocks)", pct(m.prefix_hit_rate),
          String(m.preemptions), fmt(m.ttft_mean_secs === null ? null : m.ttft_mean_secs * 1e3),
          fmt(m.itl_mean_secs === null ? null : m.itl_mean_secs * 1e3), m.prompt_tokens + " / " + m.generation_tokens]))
        : el("p", { class: "muted", text: "No generating model is loaded." }));
  },
};

const openDetails = new Set(); // which <details> the operator opened, kept across redraws
function keptOpen(key, ...children) {
  const d = el("details", { open: openDetails.has(key) }, ...children);
  d.addEventListener("toggle", () => (d.open ? openDetails.add(key) : openDetails.delete(key)));
  return d;
}

function driftView(v) {
  const r = v.report;
  const head = el("p", { class: "muted", text: `reference ${r.reference_requests}/${r.reference_target} requests` +
    (r.reference_complete ? "" : " (still collecting)") + `, current window ${r.current_requests} requests over ${fmt(r.window_secs, 0)} s, ` +
    `sample rate ${v.sample_rate}, PSI warning ${r.psi_warning} / drift ${r.psi_drift}` });
  const verdict = (f) => el("span", { class: "state " + (f.drifted ? "bad" : f.warning ? "warn" : "ok"),
    text: f.drifted ? "drift" : f.warning ? "warning" : "ok" });
  const tensors = r.tensors.map((t) => {
    // Charts for the features that moved most (at most six); every feature in the table.
    const ranked = t.features.slice().sort((a, b) => (b.psi ?? b.js ?? -1) - (a.psi ?? a.js ?? -1)).slice(0, 6);
    return el("div", {},
      el("h3", {}, el("span", { text: t.name }), " (" + t.kind + ") ",
        el("span", { class: "state " + (t.drifted ? "bad" : "ok"), text: t.drifted ? "drifted" : "no drift" }),
        el("span", { class: "muted", text: " max PSI " + fmt(t.max_psi, 3) + ", " + t.features.length + " features" })),
      el("div", { class: "cards" }, ranked.map((f) => el("figure", { class: "card" },
        el("figcaption", {}, "feature ", el("span", { text: f.name || String(f.index) }),
          " \u00b7 PSI " + fmt(f.psi, 3) + " \u00b7 KS " + fmt(f.ks, 3) + " ", verdict(f)),
        f.reference_count || f.current_count
          ? distChart(`feature ${f.index} of ${t.name}: reference (filled) and current (outlined)`,
            f.labels || (f.edges ? f.edges.map((e) => fmt(e)) : []), f.reference || [], f.current || [])
          : el("p", { class: "muted", text: "no samples yet" })))),
      keptOpen(v.version + "/" + t.kind + "/" + t.name, el("summary", { text: "all features of " + t.name }),
        table(["feature", "kind", "PSI", "KS", "JS", "reference n", "current n", "verdict"],
          t.features.map((f) => [f.name || String(f.index), f.kind, fmt(f.psi, 3), fmt(f.ks, 3), fmt(f.js, 3),
            String(f.reference_count), String(f.current_count), verdict(f)]))));
  });
  return el("div", {}, head, el("p", { class: "legend muted", text: "bars: reference; outline: current window" }), tensors);
}

function sampleBody(config) {
  const inputs = ((config && config.input) || []).map((i) => {
    const dims = (i.dims || []).map((x) => (x < 0 ? 1 : x));
    const batched = config.max_batch_size > 0;
    const shape = batched ? [1, ...dims] : dims;
    const n = shape.reduce((a, b) => a * b, 1);
    const dt = (i.data_type || "TYPE_FP32").replace("TYPE_", "");
    const datatype = dt === "STRING" ? "BYTES" : dt;
    return { name: i.name, shape, datatype, data: new Array(Math.min(n, 4096)).fill(datatype === "BYTES" ? "text" : datatype === "BOOL" ? false : 0) };
  });
  return JSON.stringify({ inputs });
}

function testForm(d) {
  const ready = d.versions.filter((v) => v.state === "READY" && v.version);
  const body = el("textarea", { id: "test-body", "aria-label": "request body (JSON)", spellcheck: "false" });
  body.value = sampleBody(d.config);
  const select = el("select", { id: "test-version", "aria-label": "version" },
    ready.map((v) => el("option", { value: v.version, text: "version " + v.version })));
  const out = el("div", { id: "test-out", "aria-live": "polite" });
  const form = el("form", { id: "test-form", onsubmit: async (e) => {
    e.preventDefault();
    const version = select.value;
    if (!version) { replace(out, el("div", { class: "msg bad", text: "no ready version" })); return; }
    try {
      const r = await fetch("ui/api/models/" + encodeURIComponent(d.name) + "/versions/" + encodeURIComponent(version) + "/infer",
        { method: "POST", headers: { "content-type": "application/json" }, body: body.value });
      const text = await r.text();
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 1); } catch (_) { /* not JSON: shown as is */ }
      replace(out, el("div", { class: "msg " + (r.ok ? "ok" : "bad"), text: r.status + " " + r.statusText }), el("pre", { text: shown }));
    } catch (err) {
      replace(out, el("div", { class: "msg bad", text: err.message }));
    }
  } }, el("label", { for: "test-version", text: "Version " }), select, body,
    el("div", { class: "actions" }, el("button", { type: "submit", text: "Send" })), out);
  form.dataset.model = d.name;
  return form;
}

const routeMessages = new Map(); // the last action's answer per route, kept across redraws
function routeCard(r, tokenRequired, i) {
  const out = el("div", { "aria-live": "polite", class: "route-out" });
  if (routeMessages.has(r.name)) out.append(routeMessages.get(r.name).cloneNode(true));
  const can = !tokenRequired || !!token;
  const act = (a, danger) => el("button", { type: "button", class: danger ? "danger" : null, "data-action": a,
    // Enabled even without a token: the server decides, and its refusal is shown.
    id: "act-" + i + "-" + a, title: can ? null : "needs the admin token",
    onclick: () => routeAction(r.name, a, out), text: a });
  let actions = [];
  if (r.kind === "canary") actions = [act("promote"), act("pause"), act("resume"), act("abort", true)];
  else if (r.kind === "blue_green" || r.kind === "blue-green" || r.active !== undefined) actions = [act("switch", true)];
  const weights = el("div", { class: "weights", role: "img", "aria-label": "weights " + r.weights.map((w) => w.target + " " + w.weight + "%").join(", ") },
    r.weights.filter((w) => w.weight > 0).map((w) => { const s = el("span", { text: w.target + " " + w.weight + "%" }); s.style.width = w.weight + "%"; return s; }));
  const parts = [
    el("h2", {}, el("span", { text: r.name }), " ", el("span", { class: "muted", text: "(" + r.kind + ")" }), " ", stateChip(r.state)),
    weights,
    table(["target", "weight"], r.weights.map((w) => [w.target, w.weight + "%"])),
  ];
  if (r.step !== undefined) parts.push(el("p", {}, "Step ", el("strong", { class: "step", text: r.step === null ? "\u2013" : String(r.step) }),
    " \u00b7 failed analyses " + (r.failures || 0) + " \u00b7 ", el("span", { class: "decision", text: r.reason })));
  else if (r.reason) parts.push(el("p", { text: r.reason }));
  const plan = r.spec && r.spec.steps;
  if (Array.isArray(plan) && plan.length) parts.push(el("ol", { class: "plan", "aria-label": "steps" }, plan.map((st, k) =>
    el("li", { class: r.step === k + 1 ? "current" : null, "aria-current": r.step === k + 1 ? "step" : null,
      text: `${st.weight}% for ${st.duration_secs ?? "?"} s` + (st.min_requests ? ` and ${st.min_requests} requests` : "") +
        (r.step === k + 1 ? " \u2190 now" : "") }))));
  if (r.history && r.history.length) parts.push(el("h3", { text: "Analyses" }),
    table(["time", "step", "weight", "requests", "checks", "decision"], r.history.slice().reverse().map((h) => [
      new Date(h.at * 1000).toLocaleTimeString(), String(h.step), h.weight + "%", String(h.requests),
      el("div", {}, h.checks.map((c) => el("div", { class: c.passed ? "ok" : "bad",
        text: `${c.name} ${fmt(c.value, 4)} ${c.floor ? "\u2265" : "\u2264"} ${c.limit} ${c.passed ? "\u2713" : "\u2717"}` }))),
      el("span", { text: h.decision })])));
  if (r.experiment) parts.push(experimentView(r.experiment));
  if (r.shadow) parts.push(el("h3", { text: "Shadow" }), table(["compared", "agreement", "mean |diff|", "max |diff|", "PSI", "shed"],
    [[String(r.shadow.compared), pct(r.shadow.agreement), fmt(r.shadow.mean_abs_diff, 4), fmt(r.shadow.max_abs_diff, 4), fmt(r.shadow.psi, 3), String(r.shadow.shed)]]));
  parts.push(el("div", { class: "actions" }, actions), out);
  return el("section", { class: "card route", "data-route": r.name }, parts);
}

function experimentView(x) {
  const blocks = x.metrics.map((m) => el("div", {},
    el("h3", {}, "A/B metric ", el("span", { text: m.metric }), " (" + m.kind + ")"),
    table(["arm", "samples", m.kind === "conversion" ? "rate" : "mean", "confidence interval"], m.arms.map((a) => [
      a.target, String(a.trials !== undefined ? a.trials : a.n), fmt(a.rate !== undefined ? a.rate : a.mean, 4),
      a.ci ? "[" + fmt(a.ci[0] !== undefined ? a.ci[0] : a.ci.low, 4) + ", " + fmt(a.ci[1] !== undefined ? a.ci[1] : a.ci.high, 4) + "]" : "\u2013"])),
    table(["control", "treatment", "test", "result", "samples still needed per arm"], m.comparisons.filter((c) => c).map((c) => [
      c.control, c.treatment, c.test,
      el("span", { text: Object.entries(c.result || {}).map(([k, v]) => k + " " + (typeof v === "number" ? fmt(v, 4) : JSON.stringify(v))).join(", ") }),
      c.samples_remaining_per_arm === null || c.samples_remaining_per_arm === undefined ? "\u2013" : String(c.samples_remaining_per_arm)]))));
  return el("div", {}, el("p", { class: "muted", text: "alpha " + x.alpha + ", exposures " + x.exposures.map((e) => e.target + " " + e.exposures).join(", ") }), blocks);
}

// ---- router and refresh ------------------------------------------------------------------
function parseHash() {
  const h = location.hash.replace(/^#\/?/, "");
  if (h.startsWith("model/")) return { name: "model", arg: decodeURIComponent(h.slice(6)) };
  if (pages[h] && h !== "model") return { name: h, arg: null };
  return { name: "overview", arg: null };
}

let busy = false;
let again = false; // a refresh was asked for while one ran
let generation = 0; // bumped by each navigation: a page fetched for an older one is dropped
async function refresh() {
  if (document.hidden) return; // no polling while the tab is hidden
  if (busy) { again = true; return; }
  busy = true;
  const root = document.getElementById("main");
  const health = document.getElementById("health");
  const cur = page;
  const g = generation;
  const live = () => g === generation;
  try {
    // Keep the focused control (a route's button, the test form) across the re-render.
    const focused = document.activeElement && document.activeElement.id;
    await pages[cur.name](root, cur.arg, live);
    if (focused) { const f = document.getElementById(focused); if (f && f !== document.activeElement) f.focus(); }
    const h = await getJSON("ui/api/health").catch(() => null);
    health.textContent = !h ? "server unreachable" : h.ready ? "server ready" : h.live ? "server live, not ready" : "server not live";
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (live()) replace(root, el("h1", { text: "Cannot show this page" }), el("p", { class: "msg bad", role: "alert", text: e.message }));
    health.textContent = "error";
  } finally {
    busy = false;
    if (again) { again = false; refresh(); }
  }
}

function navigate() {
  page = parseHash();
  generation += 1;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === page.name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.getElementById("main").replaceChildren();
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = document.getElementById("token");
    token = input.value.trim() || null;
    input.value = ""; // never shown back
    document.getElementById("token-state").textContent = token ? "set" : "none";
    refresh();
  });
  window.addEventListener("hashchange", navigate);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  navigate();
  timer = setInterval(refresh, REFRESH_MS);
});
