/* ketasim page: scenario builder, linked stage plots, comparison, trial runner.
   Plain JS, no build step; plotly.js is vendored. The whole view lives in the URL hash
   (#s=<JSON>), so a link reproduces it. Research tool, not medical advice. */
"use strict";

const COLOURS = ["#1f5fa8", "#c0392b", "#218c4a", "#7d3c98"];
const LABELS = ["A", "B", "C", "D"];
const DASHES = ["solid", "dash", "dot", "dashdot", "longdash"];
// scenarios differ by marker as well as colour (WCAG 1.4.1: not colour alone): A a plain
// line, B circles, C squares, D triangles, a few per curve; the glyphs label the legend
const SYMBOLS = [null, "circle", "square", "triangle-up"];
const GLYPHS = ["—", "●", "■", "▲"];
const MARKERS_PER_CURVE = 10;
const PLOT_IDS = ["plot-plasma", "plot-brain", "plot-block", "plot-signal", "plot-spines",
  "plot-madrs", "plot-suicide", "plot-exposure", "plot-side"];
const $ = (id) => document.getElementById(id);

const DEFAULT_SCENARIO = {
  kind: "drug", drug: "ketamine", route: "iv-infusion", dose: "0.5 mg/kg", duration: "40 min",
  schedule: "", model: "", days: 14, weight: 70, age: 40, sex: "male", disorder: "trd",
  hyp: null, interventions: [], mg: "",
};

const ks = {  // page state; window.ketasim for tests and the console
  options: null,
  state: {active: 0, scenarios: [], trial: {n: 40, seed: 0, control: "saline",
    at: "40 min, 4 h, 24 h, 3 d, 7 d, 14 d", job: null}},
  results: [],            // last /api/simulate response per scenario
  cache: new Map(),       // request JSON → response
  lastUpdateMs: null,
  updates: 0,
  seq: 0,
};
window.ketasim = ks;

// ------------------------------------------------------------------ URL state
function encodeState() {
  const s = JSON.stringify(ks.state);
  history.replaceState(null, "", "#s=" + encodeURIComponent(s));
}

function decodeState() {
  const m = location.hash.match(/^#s=(.*)$/);
  if (!m) return null;
  try {
    const s = JSON.parse(decodeURIComponent(m[1]));
    if (!Array.isArray(s.scenarios) || s.scenarios.length < 1) return null;
    s.scenarios = s.scenarios.slice(0, 4).map((x) => ({...DEFAULT_SCENARIO, ...x}));
    s.active = Math.min(Math.max(0, s.active | 0), s.scenarios.length - 1);
    s.trial = {...ks.state.trial, ...(s.trial || {})};
    return s;
  } catch (e) {
    return null;
  }
}

// ------------------------------------------------------------------ building requests
function hypothesesString(sc) {
  const d = ks.options.hypothesis_defaults;
  if (!sc.hyp) return "default";
  const parts = [];
  for (const k of Object.keys(d)) {
    const on = !!sc.hyp[k];
    if (on !== (d[k] > 0)) parts.push(`${k}=${on ? 1 : 0}`);
  }
  return parts.length ? parts.join(",") : "default";
}

/* The on-screen name of a field (its label, or its fieldset's legend), without the
   parenthesised unit or hint: "Weight (kg)" → "Weight". Errors name fields this way. */
function fieldLabel(id) {
  const el = $(id);
  const lab = el.labels && el.labels.length ? el.labels[0] : el.querySelector("legend");
  return (lab ? lab.textContent : id).replace(/\s+/g, " ").replace(/\s*\(.*\)\s*$/, "").trim();
}

/* A problem the page can tell without the server, naming the field; `field` is its id. */
class FieldError extends Error {
  constructor(field, problem) {
    super(`${fieldLabel(field)}: ${problem}`);
    this.field = field;
  }
}

/* A number field's value as a finite number within the field's min and max (the server's
   limits), or a FieldError: a number input the browser cannot read ("1e400", "-", "0." while
   typing) has an empty value and `validity.badInput`, which readForm stores as "NaN", so it
   is not taken for 0 or for "empty = default". */
function num(v, id) {
  const el = $(id);
  const x = String(v ?? "").trim() === "" ? NaN : Number(v);
  if (!Number.isFinite(x)) throw new FieldError(id, "enter a number");
  if (el.min !== "" && x < Number(el.min)) throw new FieldError(id, `at least ${el.min}`);
  if (el.max !== "" && x > Number(el.max)) throw new FieldError(id, `at most ${el.max}`);
  return x;
}

function fieldValue(id) {
  const el = $(id);
  return el.validity && el.validity.badInput ? "NaN" : el.value;
}

/* Checks of the text fields that mirror the library's parsers (ketasim.units.parse_dose and
   parse_duration, ketasim.regimen.parse_schedule) with the unit and word tables the server
   sends in /api/options (`grammar`). Each returns null or the problem; a value with a problem
   is one the server refuses too (tests/test_web_e2e.py checks this on every prefix of typed
   values), so it is not sent: typing "0.5 mg/kg" passes through "0.5 mg/", which would be an
   HTTP 422 (logged by the browser) per keystroke. Limits that need the model (largest dose,
   PK model per route) stay with the server. */
const NUM_RE = /^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?/;

function quantity(text, allowed) {
  const g = ks.options.grammar;
  const s = text.trim().replace(/μ/g, "µ").replace(/µ/g, "u");
  if (s.length > g.max_quantity_chars) {
    return {problem: `too long (at most ${g.max_quantity_chars} characters)`};
  }
  const m = s.match(NUM_RE);
  const unit = m ? s.slice(m[0].length).trim() : "";
  if (!m || /^[0-9]/.test(unit)) return {problem: `enter a number with a unit (${allowed})`};
  return {value: Number(m[0]), unit: unit};
}

function doseProblem(text) {
  const g = ks.options.grammar;
  const q = quantity(text, g.dose_allowed);
  if (q.problem) return q.problem;
  if (!q.unit) return `add a unit (${g.dose_allowed})`;
  if (!(Number.isFinite(q.value) && q.value > 0)) return "must be greater than zero";
  let u = q.unit.replace(/ /g, "").toLowerCase();
  if (u.endsWith("/kg")) u = u.slice(0, -3);
  if (!g.dose_units.includes(u)) return `unknown unit '${q.unit}' (allowed: ${g.dose_allowed})`;
  return null;
}

/* [hours, null] or [null, problem], as parse_duration (a bare number is hours). */
function hours(text, allowZero) {
  const g = ks.options.grammar;
  const q = quantity(text, g.time_allowed);
  if (q.problem) return [null, q.problem];
  const f = g.time_units_h[(q.unit || "h").toLowerCase()];
  if (f === undefined) return [null, `unknown time unit '${q.unit}' (allowed: ${g.time_allowed})`];
  const h = q.value * f;
  if (!Number.isFinite(h) || h < 0 || (h === 0 && !allowZero)) {
    return [null, `must be ${allowZero ? "≥" : ">"} 0`];
  }
  return [h, null];
}

function repeatProblem(intervalH, count, span) {
  let n;
  if (count !== undefined) {
    n = count.length <= 6 ? Number(count) : 1e6;
  } else {
    const [total, problem] = hours(span, false);
    if (problem) return `duration: ${problem}`;
    n = Math.floor(total / intervalH + 1e-9);
  }
  return n < 1 || n > 10000 ? `number of doses must be 1..10000, got ${n}` : null;
}

function scheduleProblem(text) {
  const g = ks.options.grammar;
  const t = text.trim();
  if (!t || ["once", "single"].includes(t.toLowerCase())) return null;
  const s = t.toLowerCase().replace(/×/g, "x").replace(/\s+/g, " ");
  const help = `e.g. ${g.schedule_help}`;
  if (!/^[\x00-\x7f]*$/.test(s)) return "only plain (ASCII) letters and digits are understood";
  let m = s.match(/^at (.+)$/);
  if (m) {
    for (const part of m[1].split(",")) {
      const [, problem] = hours(part, true);
      if (problem) return problem;
    }
    return null;
  }
  m = s.match(/^every (.+?) (?:x ?(\d+)|for (.+))$/);
  if (m) {
    const [interval, problem] = hours(m[1], false);
    return problem ? `interval: ${problem}` : repeatProblem(interval, m[2], m[3]);
  }
  m = s.match(/^(?:(\w+) (?:times )?)?(daily|weekly)(?: (?:x ?(\d+)|for (.+)))?$/);
  if (m) {
    const word = m[1] || "once";
    const perN = g.schedule_counts[word] || (/^[0-9]+$/.test(word) ? Number(word) : 0);
    if (!perN) return `cannot read '${t}' (${help})`;
    if (m[3] === undefined && m[4] === undefined) return `'${t}' needs 'x N' or 'for <duration>'`;
    return repeatProblem(g.schedule_per_h[m[2]] / perN, m[3], m[4]);
  }
  return `cannot read '${t}' (${help})`;
}

/* The problem with a text field's value ("dose", "duration", "schedule"), or null. */
function inputProblem(kind, text) {
  if (kind === "dose") return doseProblem(text);
  if (kind === "duration") return hours(text, false)[1];
  return scheduleProblem(text);
}
ks.inputProblem = inputProblem;

function checked(id, kind, text) {
  const problem = inputProblem(kind, text);
  if (problem) throw new FieldError(id, problem);
  return text;
}

function interventionsString(sc) {
  const items = [...(sc.interventions || [])];
  if (sc.mg !== "" && sc.mg !== null && sc.mg !== undefined) {
    items.push(`mg=${num(sc.mg, "f-mg")}`);
  }
  return items.join(",");
}

function armOf(sc, name) {
  const arm = {name: name};
  if (sc.kind !== "drug") {
    arm.control = sc.kind;
    // the midazolam infusion of an active placebo has a duration too (sedation time course)
    if (sc.kind === "active-placebo" && sc.duration.trim()) {
      arm.duration = checked("f-duration", "duration", sc.duration.trim());
    }
  } else {
    arm.drug = sc.drug;
    arm.route = sc.route;
    arm.dose = checked("f-dose", "dose", sc.dose.trim());
    if (sc.route === "iv-infusion" && sc.duration.trim()) {
      arm.duration = checked("f-duration", "duration", sc.duration.trim());
    }
    if (sc.schedule.trim()) arm.schedule = checked("f-schedule", "schedule", sc.schedule.trim());
    if (sc.model) arm.model = sc.model;
  }
  arm.hypotheses = hypothesesString(sc);
  arm.interventions = interventionsString(sc);
  return arm;
}

function simulateRequest(sc, i) {
  return {arm: armOf(sc, LABELS[i]),
    patient: {weight_kg: num(sc.weight, "f-weight"), age_years: num(sc.age, "f-age"),
      sex: sc.sex, disorder: sc.disorder},
    days: num(sc.days, "f-days")};
}

/* The field (element id) of each place in a request body that the page fills in. */
const FIELD_IDS = {
  "arm.control": "f-kind", "arm.drug": "f-drug", "arm.route": "f-route", "arm.dose": "f-dose",
  "arm.duration": "f-duration", "arm.schedule": "f-schedule", "arm.model": "f-model",
  "arm.hypotheses": "hyp-set", "arm.interventions": "int-set", "days": "f-days",
  "patient.weight_kg": "f-weight", "patient.age_years": "f-age", "patient.sex": "f-sex",
  "patient.disorder": "f-disorder", "population.disorder": "f-disorder",
  "population.n": "t-n", "population.seed": "t-seed", "endpoints.at": "t-at",
};

/* One item of a 422's `detail` as [text, field id or null], the field named as on screen: the
   API's `loc` (["body", "patient", "weight_kg"]) becomes the field's label ("Weight"), and a
   field the library names at the start of the reason ("dose: unknown unit …" at
   ["body", "arm"]) too; the server's reason is kept. `arms` names a trial's arms by index. */
function errorItem(d, arms) {
  let path = (d.loc || []).filter((x) => x !== "body");
  let msg = String(d.msg || "invalid");
  let where = "";
  if (path[0] === "arm" && Number.isInteger(path[1])) {
    where = `arm ${arms && arms[path[1]] ? arms[path[1]] : path[1] + 1}: `;
    path = ["arm", ...path.slice(2)];
  }
  let qualifier = "";
  const m = msg.match(/^([\w.]+)((?: \w+)*): (.*)$/s);
  if (m) {
    const key = [[...path, m[1]].join("."), m[1]].find((k) => k in FIELD_IDS);
    if (key) {
      path = key.split(".");
      qualifier = m[2].trim() ? ` (${m[2].trim()})` : "";
      msg = m[3];
    }
  }
  const id = FIELD_IDS[path.join(".")] || null;
  const name = id ? fieldLabel(id) : path.join(".");
  return [`${where}${name ? name + qualifier + ": " : ""}${msg}`, id];
}

function errorText(body, arms) {
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => errorItem(d, arms)[0]).join("; ");
  }
  return body && body.detail ? String(body.detail) : "request failed";
}
ks.errorText = errorText;

class RequestError extends Error {
  constructor(body, arms) {
    super(errorText(body, arms));
    const first = body && Array.isArray(body.detail) && body.detail[0];
    this.field = first ? errorItem(first, arms)[1] : null;
  }
}

async function postJSON(url, payload, arms) {
  const r = await fetch(url, {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify(payload)});
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new RequestError(body, arms);
  return body;
}

// ------------------------------------------------------------------ form <-> state
function fillSelect(sel, values, labels) {
  sel.innerHTML = "";
  values.forEach((v, i) => {
    const o = document.createElement("option");
    o.value = v;
    o.textContent = labels ? labels[i] : v;
    sel.appendChild(o);
  });
}

function buildForm() {
  const o = ks.options;
  fillSelect($("f-drug"), o.drugs);
  fillSelect($("f-route"), o.routes);
  const hyp = $("hypotheses");
  for (const [k, text] of Object.entries(o.hypotheses)) {
    const lab = document.createElement("label");
    const cb = document.createElement("input");
    cb.type = "checkbox";
    cb.id = `h-${k}`;
    cb.dataset.hyp = k;
    lab.htmlFor = cb.id;
    lab.append(cb, document.createTextNode(`${k}: ${text}`));
    hyp.appendChild(lab);
  }
  const iv = $("interventions");
  for (const [k, text] of Object.entries(o.interventions)) {
    const lab = document.createElement("label");
    const cb = document.createElement("input");
    cb.type = "checkbox";
    cb.id = `i-${k}`;
    cb.dataset.intervention = k;
    lab.htmlFor = cb.id;
    lab.append(cb, document.createTextNode(`${k} — ${text}`));
    iv.appendChild(lab);
  }
  $("f-days").max = o.max_days;
}

function modelsFor(drug) {
  return ["", ...(ks.options.models[drug] || [])];
}

function writeForm() {
  const sc = ks.state.scenarios[ks.state.active];
  $("f-kind").value = sc.kind;
  $("f-drug").value = sc.drug;
  $("f-route").value = sc.route;
  $("f-dose").value = sc.dose;
  $("f-duration").value = sc.duration;
  $("f-schedule").value = sc.schedule;
  const models = modelsFor(sc.drug);
  fillSelect($("f-model"), models, models.map((m) => m || "default for the route"));
  $("f-model").value = models.includes(sc.model) ? sc.model : "";
  $("f-days").value = sc.days;
  $("f-weight").value = sc.weight;
  $("f-age").value = sc.age;
  $("f-sex").value = sc.sex;
  $("f-disorder").value = sc.disorder;
  const d = ks.options.hypothesis_defaults;
  for (const cb of document.querySelectorAll("[data-hyp]")) {
    const k = cb.dataset.hyp;
    cb.checked = sc.hyp ? !!sc.hyp[k] : d[k] > 0;
  }
  for (const cb of document.querySelectorAll("[data-intervention]")) {
    cb.checked = (sc.interventions || []).includes(cb.dataset.intervention);
  }
  $("f-mg").value = sc.mg;
  syncEnabled();
  const t = ks.state.trial;
  $("t-n").value = t.n;
  $("t-seed").value = t.seed;
  $("t-control").value = t.control;
  $("t-at").value = t.at;
  renderTabs();
}

function syncEnabled() {
  const drug = $("f-kind").value === "drug";
  for (const id of ["f-drug", "f-route", "f-dose", "f-schedule", "f-model"]) $(id).disabled = !drug;
  $("f-duration").disabled = !(drug && $("f-route").value === "iv-infusion")
    && $("f-kind").value !== "active-placebo";
}

function readForm() {
  const sc = ks.state.scenarios[ks.state.active];
  const prevDrug = sc.drug;
  sc.kind = $("f-kind").value;
  sc.drug = $("f-drug").value;
  sc.route = $("f-route").value;
  sc.dose = $("f-dose").value;
  sc.duration = $("f-duration").value;
  sc.schedule = $("f-schedule").value;
  sc.model = sc.drug === prevDrug ? $("f-model").value : "";
  sc.days = fieldValue("f-days");
  sc.weight = fieldValue("f-weight");
  sc.age = fieldValue("f-age");
  sc.sex = $("f-sex").value;
  sc.disorder = $("f-disorder").value;
  const hyp = {};
  for (const cb of document.querySelectorAll("[data-hyp]")) hyp[cb.dataset.hyp] = cb.checked;
  const d = ks.options.hypothesis_defaults;
  sc.hyp = Object.keys(d).every((k) => hyp[k] === (d[k] > 0)) ? null : hyp;
  sc.interventions = [...document.querySelectorAll("[data-intervention]")]
    .filter((cb) => cb.checked).map((cb) => cb.dataset.intervention);
  sc.mg = fieldValue("f-mg");
  const t = ks.state.trial;
  t.n = fieldValue("t-n");
  t.seed = fieldValue("t-seed");
  t.control = $("t-control").value;
  t.at = $("t-at").value;
  if (sc.drug !== prevDrug) writeForm();
  syncEnabled();
}

/* The tab buttons are kept and updated, not rebuilt: a click on a tab right after editing a
   field first fires the field's `change` (on blur, at mousedown), and a tab bar rebuilt then
   would take the button away from under the mouse and lose the click. They follow the ARIA
   tabs pattern: a tablist of tabs (aria-selected), the form is the tab panel labelled by the
   selected tab, one Tab stop (the selected tab), and the arrow keys, Home and End select. */
function selectTab(i) {
  ks.state.active = i;
  writeForm();
  encodeState();
}

function renderTabs() {
  const box = $("tabs");
  const n = ks.state.scenarios.length;
  while (box.children.length > n) box.lastElementChild.remove();
  for (let i = box.children.length; i < n; i++) {
    const b = document.createElement("button");
    b.type = "button";
    b.id = `tab-${LABELS[i]}`;
    b.setAttribute("role", "tab");
    b.setAttribute("aria-controls", "scenario-panel");
    b.setAttribute("aria-label", `Scenario ${LABELS[i]}`);
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = COLOURS[i];
    const g = document.createElement("span");
    g.className = "glyph";
    g.setAttribute("aria-hidden", "true");
    g.style.color = COLOURS[i];
    g.textContent = GLYPHS[i];
    b.append(sw, g, document.createTextNode(LABELS[i]));
    b.addEventListener("click", () => selectTab(i));
    box.appendChild(b);
  }
  [...box.children].forEach((b, i) => {
    const on = i === ks.state.active;
    b.setAttribute("aria-selected", String(on));
    b.tabIndex = on ? 0 : -1;
  });
  $("scenario-panel").setAttribute("aria-labelledby", `tab-${LABELS[ks.state.active]}`);
  $("add-scenario").disabled = n >= 4;
  $("remove-scenario").disabled = n <= 1;
}

function tabKeys(ev) {
  const n = ks.state.scenarios.length;
  const at = ks.state.active;
  const to = {ArrowRight: at + 1, ArrowDown: at + 1, ArrowLeft: at - 1, ArrowUp: at - 1,
    Home: 0, End: n - 1}[ev.key];
  if (to === undefined) return;
  ev.preventDefault();
  selectTab((to + n) % n);
  $("tabs").children[ks.state.active].focus();
}

// ------------------------------------------------------------------ plots
const LOG_TICKS = [0.1, 1, 4, 24, 72, 168, 336, 672, 1344, 2880];
const LOG_TEXT = ["6 min", "1 h", "4 h", "1 d", "3 d", "7 d", "14 d", "28 d", "56 d", "120 d"];

function logAxis() { return ks.state.axis !== "linear"; }

function x(res) {
  // log axis: hours (t = 0 left out); linear axis: days
  return logAxis() ? res.time_h.map((t) => (t > 0 ? t : null)) : res.time_h.map((t) => t / 24);
}

function xaxis() {
  if (logAxis()) {
    return {type: "log", tickvals: LOG_TICKS, ticktext: LOG_TEXT, zeroline: false, tickangle: 0,
      title: {text: ""}};
  }
  return {type: "linear", zeroline: false, title: {text: ""}, ticksuffix: " d"};
}

/* Titles, units and per-plot legends are HTML (each plot's <figcaption> and the list under
   it): Plotly measures every text it draws, and its titles and legends were a third of an
   update's time. Tick labels are never measured (ticklabeloverflow "allow": they fit the
   margins). */
function axisStyle(extra) {
  return Object.assign({zeroline: false, ticklabeloverflow: "allow", automargin: false}, extra);
}

function baseLayout(extra) {
  const y = (extra && extra.yaxis) || {};
  const lay = Object.assign({
    margin: {l: 44, r: 14, t: 10, b: 24}, height: 220,
    showlegend: false,
    font: {family: "system-ui, DejaVu Sans, sans-serif", size: 11},
    paper_bgcolor: "#fff", plot_bgcolor: "#fff", uirevision: "keep",
  }, extra || {});
  lay.xaxis = axisStyle(xaxis());
  lay.yaxis = axisStyle(y);
  if (lay.yaxis2) lay.yaxis2 = axisStyle(lay.yaxis2);
  return lay;
}

/* A fixed y range on round numbers that holds every visible point (with `tozero`, from 0):
   a small change of input usually keeps it, so the axes need not be redrawn. */
function niceStep(x) {
  // the largest of 1, 2, 2.5, 5 × 10^k not above x
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  const m = x / p;
  return (m >= 5 ? 5 : m >= 2.5 ? 2.5 : m >= 2 ? 2 : 1) * p;
}

function extent(traces, axis) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const t of traces) {
    if ((t.yaxis || "y") !== axis || t.visible === false) continue;
    for (const v of t.y) {
      if (v === null || !Number.isFinite(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  return [lo, hi];
}

function niceRange(traces, axis, tozero, pad = 0.02) {
  let [lo, hi] = extent(traces, axis);
  if (!(hi >= lo)) return [0, 1];
  if (tozero) { lo = Math.min(lo, 0); hi = Math.max(hi, 0); }
  let span = hi - lo;
  if (!(span > 1e-9 * Math.max(Math.abs(hi), Math.abs(lo)))) span = Math.abs(hi) || 1;
  const step = niceStep(span / 5);
  let r0 = tozero && lo >= 0 ? 0 : Math.floor((lo - pad * span) / step) * step;
  let r1 = tozero && hi <= 0 ? 0 : Math.ceil((hi + pad * span) / step) * step;
  if (lo >= 0 && r0 < 0) r0 = -step / 5;  // a little room below a curve that starts at 0
  if (hi <= 0 && r1 > 0) r1 = step / 5;
  return [+r0.toPrecision(12), +r1.toPrecision(12)];
}

const hidden = new Set();  // "plot id|series name" switched off in the plot's legend

function line(res, i, xs, y, name, dash, plotId, extra) {
  // colour = scenario (legend above the plots); line style = series (legend under each plot)
  const sym = SYMBOLS[i];
  const marks = sym ? {mode: "lines+markers",
    marker: {symbol: sym, size: 6, color: COLOURS[i], maxdisplayed: MARKERS_PER_CURVE}} : {};
  return Object.assign({x: xs, y: y, type: "scatter", mode: "lines",
    name: name, visible: !hidden.has(`${plotId}|${name}`),
    line: {color: COLOURS[i], dash: DASHES[dash % DASHES.length], width: 1.8, simplify: false},
    hovertemplate: `${LABELS[i]} ${name}: %{y:.3g}<br>${logAxis() ? "%{x:.3g} h" : "day %{x:.2f}"}` +
      "<extra></extra>"}, marks, extra || {});
}

function seriesTraces(results, xs, plotId, pick) {
  const traces = [];
  const names = [];
  const series = [];  // [scenario letter, name, hours, y, shown] for the text description
  results.forEach((res, i) => {
    if (!res) return;
    pick(res).forEach(([name, y, extra], j) => {
      if (!y) return;
      const t = line(res, i, xs[i], y, name, j, plotId, extra);
      traces.push(t);
      series.push([LABELS[i], name, res.time_h, y, t.visible]);
      if (!names.some((n) => n[0] === name)) names.push([name, j]);
    });
  });
  return [traces, names, series];
}

/* The text alternative of a plot (#<id>-desc, read by screen readers; the Plotly drawing is
   hidden from them): per scenario and series, the first value, the highest and the lowest
   (with their times, where they differ from the ends) and the last. */
function fmtHours(h) {
  if (h === 0) return "the start";
  if (h < 1) return `${+(h * 60).toPrecision(2)} min`;
  if (h < 48) return `${+h.toPrecision(2)} h`;
  return `${+(h / 24).toPrecision(3)} d`;
}

function describeSeries(hours, y) {
  let first = -1;
  let last = -1;
  let hi = -1;
  let lo = -1;
  for (let k = 0; k < y.length; k++) {
    const v = y[k];
    if (v === null || !Number.isFinite(v)) continue;
    if (first < 0) first = k;
    last = k;
    if (hi < 0 || v > y[hi]) hi = k;
    if (lo < 0 || v < y[lo]) lo = k;
  }
  if (first < 0) return "no values";
  const v = (k) => String(+y[k].toPrecision(3));
  const parts = [`${v(first)} at ${fmtHours(hours[first])}`];
  const ends = [v(first), v(last)];
  if (!ends.includes(v(hi))) parts.push(`highest ${v(hi)} at ${fmtHours(hours[hi])}`);
  if (!ends.includes(v(lo)) && lo !== hi) parts.push(`lowest ${v(lo)} at ${fmtHours(hours[lo])}`);
  parts.push(`${v(last)} at ${fmtHours(hours[last])}`);
  return parts.join(", ");
}

function describePlot(id, series) {
  const unit = $(`${id}-title`).querySelector(".unit");
  const head = `${$(id).dataset.label}${unit ? ` (${unit.textContent})` : ""}, by time after ` +
    "the first dose.";
  const lines = series.map(([sc, name, hours, y, shown]) =>
    `Scenario ${sc}, ${name}${shown ? "" : " (hidden)"}: ${describeSeries(hours, y)}.`);
  if (id === "plot-exposure") {
    const b = ks.options.bands_ng_per_ml;
    lines.push(`Analgesic from ${b.analgesic_ng_per_ml} ng/mL; anaesthetic band from ` +
      `${b.anaesthetic_ng_per_ml} ng/mL.`);
  }
  const text = [head, ...lines].join(" ");
  const el = $(`${id}-desc`);
  if (el.textContent !== text) el.textContent = text;
}

// showSendToCloud: false: no "Share chart" button (it would open cloud.plotly.com with the data)
const PLOT_CONFIG = {responsive: true, displaylogo: false, showSendToCloud: false,
  showEditInChartStudio: false, modeBarButtonsToRemove: ["lasso2d", "select2d", "sendDataToCloud"]};

// Plotly's dash patterns for a 1.8-px line (Drawing.dashStyle), for the HTML legends
const DASH_ARRAY = {solid: "", dash: "9,9", dot: "3,3", dashdot: "9,3,3,3", longdash: "15,15"};
const SVG_NS = "http://www.w3.org/2000/svg";

function renderPlotLegend(id, names) {
  const box = $(`${id}-legend`);
  const key = JSON.stringify(names) + [...hidden].join();
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  const focused = [...box.children].indexOf(document.activeElement);
  box.textContent = "";
  for (const [name, j] of names) {
    const b = document.createElement("button");
    b.type = "button";
    const off = hidden.has(`${id}|${name}`);
    b.setAttribute("aria-pressed", String(!off));
    b.title = off ? `show ${name}` : `hide ${name}`;
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("width", "26");
    svg.setAttribute("height", "8");
    svg.setAttribute("aria-hidden", "true");
    const ln = document.createElementNS(SVG_NS, "line");
    for (const [k, v] of [["x1", 1], ["y1", 4], ["x2", 25], ["y2", 4], ["stroke", "#444"],
      ["stroke-width", 1.8], ["stroke-dasharray", DASH_ARRAY[DASHES[j % DASHES.length]]]]) {
      ln.setAttribute(k, v);
    }
    svg.appendChild(ln);
    b.append(svg, document.createTextNode(name));
    b.addEventListener("click", () => {
      const k = `${id}|${name}`;
      if (hidden.has(k)) hidden.delete(k); else hidden.add(k);
      renderPlots([id]).catch(() => {});
    });
    box.appendChild(b);
  }
  const stop = Math.max(0, Math.min(focused, box.children.length - 1));
  [...box.children].forEach((b, i) => { b.tabIndex = i === stop ? 0 : -1; });
  if (focused >= 0 && box.children[stop]) box.children[stop].focus();
}

/* Each plot legend is a toolbar: one Tab stop (its last used entry); the arrow keys, Home
   and End move between its entries. */
function legendKeys(ev) {
  const items = [...ev.currentTarget.querySelectorAll("button")];
  const at = items.indexOf(document.activeElement);
  if (at < 0) return;
  const to = {ArrowRight: at + 1, ArrowDown: at + 1, ArrowLeft: at - 1, ArrowUp: at - 1,
    Home: 0, End: items.length - 1}[ev.key];
  if (to === undefined) return;
  ev.preventDefault();
  const next = items[(to + items.length) % items.length];
  items.forEach((b) => { b.tabIndex = b === next ? 0 : -1; });
  next.focus();
}

/* Plotly's mode bar (zoom, pan, reset, download) is for the mouse; its buttons were ~70 Tab
   stops between the form and the trial. They leave the tab order after each draw (Plotly may
   rebuild them then: Plotly.react here, relayout in linkAxes); the mouse uses them as before. */
function modebarOutOfTabOrder(gd) {
  for (const b of gd.querySelectorAll(".modebar a, .modebar button")) b.tabIndex = -1;
  return gd;
}

/* Every panel's traces and layout from ks.results. */
function plotJobs() {
  const R = ks.results;
  const bands = ks.options.bands_ng_per_ml;
  const xs = R.map((r) => (r ? x(r) : null));  // one x array per scenario, shared by its traces
  const jobs = [];
  const P = (id, pick, layout) => {
    const [traces, names, series] = seriesTraces(R, xs, id, pick);
    jobs.push([id, traces, layout, names, series]);
  };
  P("plot-plasma", (r) => Object.entries(r.plasma_ng_per_ml), baseLayout());
  P("plot-brain", (r) => Object.entries(r.brain_free_uM), baseLayout());
  P("plot-block", (r) => [["E2B (GluN2B, pyramidal)", r.readouts.block_E2B],
    ["Esyn (synaptic)", r.readouts.block_Esyn], ["I (interneurons)", r.readouts.block_I],
    ["H (lateral habenula)", r.readouts.block_H]],
  baseLayout({yaxis: {rangemode: "tozero"}}));
  P("plot-signal", (r) => [["p-eEF2", r.readouts.p_eef2], ["BDNF", r.readouts.bdnf],
    ["mTORC1", r.readouts.mtorc1], ["glutamate", r.readouts.glutamate]],
  baseLayout());
  P("plot-spines", (r) => [["spine density", r.readouts.spine_density],
    ["synaptic proteins", r.readouts.synaptic_proteins],
    ["synaptic strength", r.readouts.synaptic_strength]],
  baseLayout());
  P("plot-madrs", (r) => [["MADRS", r.scores.madrs]],
    baseLayout({yaxis: {rangemode: "tozero"}}));
  P("plot-suicide", (r) => [["MADRS item 10", r.scores.madrs_item10],
    ["SSI", r.scores.ssi, {yaxis: "y2"}]],
  baseLayout({yaxis: {rangemode: "tozero"},
    yaxis2: {overlaying: "y", side: "right", rangemode: "tozero"},
    margin: {l: 44, r: 36, t: 10, b: 24}}));
  // effect-site concentration, log scale, with the exposure bands from the drug card
  const an = bands.anaesthetic_ng_per_ml;
  const al = bands.analgesic_ng_per_ml;
  const peak = Math.max(1, ...R.filter(Boolean).map((r) => r.summary.peak_effect_site_ng_per_ml || 1));
  // the top of the log axis moves in steps of 0.1 decade, so most updates keep the layout
  const top = Math.ceil(10 * Math.log10(Math.max(an * 3, peak * 1.5))) / 10;
  P("plot-exposure", (r) => [["effect site", r.scores.effect_site_ng_per_ml.map(
    (v) => (v > 0.1 ? v : null))]], baseLayout({
    yaxis: {type: "log", range: [-1, top]},
    shapes: [
      {type: "rect", xref: "paper", x0: 0, x1: 1, y0: an, y1: Math.pow(10, top),
        fillcolor: "rgba(192,57,43,0.14)", line: {width: 0}},
      {type: "line", xref: "paper", x0: 0, x1: 1, y0: an, y1: an,
        line: {color: "#c0392b", width: 1, dash: "dash"}},
      {type: "line", xref: "paper", x0: 0, x1: 1, y0: al, y1: al,
        line: {color: "#b7950b", width: 1, dash: "dot"}}],
    annotations: [
      {xref: "paper", x: 0.99, xanchor: "right", y: Math.log10(an), yanchor: "bottom",
        text: `anaesthetic band ≥ ${an} ng/mL`, showarrow: false,
        font: {size: 10, color: "#922b21"}},
      {xref: "paper", x: 0.99, xanchor: "right", y: Math.log10(al), yanchor: "bottom",
        text: `analgesic ≥ ${al} ng/mL`, showarrow: false, font: {size: 10, color: "#7d6608"}}],
  }));
  P("plot-side", (r) => [["CADSS (dissociation)", r.scores.cadss],
    ["ΔSBP mmHg", r.scores.sbp_change_mmhg], ["sedation ×10", r.scores.sedation.map((v) => v * 10)],
    ["BPRS+", r.scores.bprs_positive]],
  baseLayout());
  return jobs;
}

/* Draw the panels (all, or those in `only`), the MADRS panel first, all in one task: one
   style and layout pass and one paint for the nine, instead of one per panel. A panel whose
   layout (with its round y range), series and x values are as last drawn gets only its new
   y values (Plotly.animate without redraw: the lines are redrawn, the axes, grid, shapes and
   text are not); any other goes through Plotly.react. Resolves when every panel is drawn. */
const drawnKey = new Map();
const shownRange = new Map();  // panel id → y range last drawn
const ANIMATE = {transition: {duration: 0}, frame: {duration: 0, redraw: false},
  mode: "immediate"};

function rangesHold(gd, layout) {
  // the drawn ranges are still ours (not zoomed or autoscaled by the user)
  const full = gd._fullLayout;
  if (!full) return false;
  for (const ax of ["yaxis", "yaxis2"]) {
    if (!layout[ax] || !layout[ax].range) continue;
    const r = full[ax] && full[ax].range;
    if (!r || full[ax].autorange || r[0] !== layout[ax].range[0] || r[1] !== layout[ax].range[1]) {
      return false;
    }
  }
  return true;
}

/* Data-only redraw without Plotly's pipeline. Profiled in headless Chromium, Plotly's
   supplyDefaults alone took ~6 ms per panel on every update (two thirds of the nine panels'
   drawing), even for Plotly.animate without redraw. When a panel's layout, series and x
   values are as last drawn and its y ranges hold (the caller checks), every line's SVG path
   is rewritten from the panel's own axes (Plotly's data → pixel maps, so log axes and gaps
   come out as Plotly draws them; tests/test_web_e2e.py compares the two), and the new values
   are put where Plotly keeps them (data, full data, calcdata), so hover, legend toggles and
   later redraws see them. Anything unexpected returns false and Plotly draws instead. */
function axisOf(fl, id) {
  return fl[id.charAt(0) + "axis" + id.slice(1)];
}

function fastRedraw(gd, traces) {
  const fl = gd._fullLayout;
  if (!fl || !gd.calcdata || !gd._fullData || gd.calcdata.length !== traces.length) return false;
  const plan = [];
  for (const g of gd.querySelectorAll("g.trace.scatter")) {
    const cd = g.__data__;
    const tr = cd && cd[0] && cd[0].trace;
    if (!tr || tr.type !== "scatter" || !(tr.mode === "lines" || tr.mode === "lines+markers") ||
        tr.fill !== "none") return false;
    const t = traces[tr.index];
    const path = g.querySelectorAll("path.js-line");
    // markers (scenarios B–D): each is bound to its calcdata point, moved below as Plotly's
    // Drawing.translatePoint does
    const points = tr.mode === "lines+markers" ? [...g.querySelectorAll("path.point")] : [];
    const xa = axisOf(fl, tr.xaxis);
    const ya = axisOf(fl, tr.yaxis);
    if (!t || path.length !== 1 || cd.length !== t.y.length || t.x.length !== t.y.length ||
        !xa || !ya || typeof xa.c2p !== "function" || typeof ya.c2p !== "function") {
      return false;
    }
    plan.push([path[0], cd, t, xa, ya, points]);
  }
  for (const [path, cd, t, xa, ya, points] of plan) {
    let d = "";
    let pen = false;  // a gap (missing or off-axis value) lifts the pen, as connectgaps: false
    for (let j = 0; j < t.y.length; j++) {
      const xc = xa.d2c(t.x[j]);
      const yc = t.y[j] === null ? undefined : ya.d2c(t.y[j]);
      cd[j].x = xc;
      cd[j].y = yc;
      const px = xa.c2p(xc);
      const py = yc === undefined ? NaN : ya.c2p(yc);
      if (!Number.isFinite(px) || !Number.isFinite(py)) { pen = false; continue; }
      d += (pen ? "L" : "M") + Math.round(px * 100) / 100 + "," + Math.round(py * 100) / 100;
      pen = true;
    }
    path.setAttribute("d", d || "M0,0");
    for (const el of points) {
      const pt = el.__data__;
      const px = pt ? xa.c2p(pt.x) : NaN;
      const py = pt && pt.y !== undefined ? ya.c2p(pt.y) : NaN;
      if (Number.isFinite(px) && Number.isFinite(py)) {
        el.setAttribute("transform", `translate(${px},${py})`);
        el.style.display = "";
      } else {
        el.style.display = "none";  // Plotly drops a marker without a value
      }
    }
  }
  traces.forEach((t, i) => {
    gd.data[i].x = t.x;
    gd.data[i].y = t.y;
    if (gd._fullData[i]) { gd._fullData[i].x = t.x; gd._fullData[i].y = t.y; }
  });
  if (typeof gd.emit === "function") gd.emit("ketasim_redrawn");
  return true;
}

function renderPlots(only) {
  let jobs = plotJobs();
  if (only) jobs = jobs.filter((j) => only.includes(j[0]));
  jobs.sort((a, b) => (b[0] === "plot-madrs") - (a[0] === "plot-madrs"));
  const done = [];
  ks.lastFullRedraws = 0;
  ks.lastFastRedraws = 0;
  ks.lastFullIds = [];
  for (const [id, traces, layout, names, series] of jobs) {
    const gd = $(id);
    if (layout.yaxis.type !== "log") {
      const tozero = layout.yaxis.rangemode === "tozero";
      let range = niceRange(traces, "y", tozero);
      // the range last drawn stays while it holds every point (with the usual margin) and the
      // curves fill at least half of it, so a small change of input redraws only the lines,
      // not the axes; a range outgrown gets 25% headroom for the next change the same way
      const prev = shownRange.get(id);
      if (prev) {
        const inside = range[0] >= prev[0] && range[1] <= prev[1];
        if (inside && range[1] - range[0] >= 0.5 * (prev[1] - prev[0])) {
          range = prev;
        } else if (!inside) {
          range = niceRange(traces, "y", tozero, 0.25);
        }
      }
      layout.yaxis.range = range;
      shownRange.set(id, layout.yaxis.range);
      layout.yaxis.autorange = false;
    }
    if (layout.yaxis2) {
      // the right axis is the left one scaled by the ratio of the two series' peaks, so
      // proportional series (item 10 and SSI) lie on each other, as with autorange
      const peak = (ax) => Math.max(0, ...traces.filter((t) => (t.yaxis || "y") === ax)
        .map((t) => Math.max(0, ...t.y.filter(Number.isFinite))));
      const k = peak("y") > 0 ? peak("y2") / peak("y") : 1;
      layout.yaxis2.range = layout.yaxis.range.map((v) => +(v * k).toPrecision(12));
      layout.yaxis2.autorange = false;
    }
    const key = JSON.stringify([layout, traces.map((t) => [t.name, t.line, t.visible, t.yaxis,
      t.y.length, t.x.length, t.x[1], t.x[t.x.length - 1]])]);
    let drawn;
    const same = drawnKey.get(id) === key && gd.data && gd.data.length === traces.length &&
      rangesHold(gd, layout);
    if (same && fastRedraw(gd, traces)) {
      drawn = Promise.resolve(gd);
      ks.lastFastRedraws += 1;
    } else if (same) {
      drawn = Plotly.animate(gd, {data: traces.map((t) => ({x: t.x, y: t.y})),
        traces: traces.map((_, i) => i)}, ANIMATE);
    } else {
      drawn = Plotly.react(gd, traces, layout, PLOT_CONFIG).then(modebarOutOfTabOrder);
      drawnKey.set(id, key);
      ks.lastFullRedraws += 1;
      ks.lastFullIds.push(id);
    }
    done.push(drawn);
    renderPlotLegend(id, names);
    describePlot(id, series);
    if (id === "plot-madrs" && !only) {
      renderLegend();
      renderSummary();
      const start = ks.updateStart;
      drawn.then(() => { ks.lastFirstMs = performance.now() - start; });
    }
  }
  return Promise.all(done);
}

function renderLegend() {
  const box = $("legend");
  box.innerHTML = "";
  ks.state.scenarios.forEach((sc, i) => {
    const s = document.createElement("span");
    const sw = document.createElement("span");
    sw.className = "sw";
    sw.style.background = COLOURS[i];
    const g = document.createElement("span");
    g.className = "glyph";
    g.setAttribute("aria-hidden", "true");
    g.style.color = COLOURS[i];
    g.textContent = GLYPHS[i];
    const arm = armOf(sc, LABELS[i]);
    const what = arm.control ? (arm.control === "saline" ? "saline placebo" : "active placebo")
      : `${arm.drug} ${arm.dose} ${arm.route}${arm.schedule ? ", " + arm.schedule : ""}`;
    s.append(sw, g, document.createTextNode(`${LABELS[i]}: ${what}, ${sc.weight} kg`));
    box.appendChild(s);
  });
}

/* v.toFixed(nd), except that an exact tie is rounded half to even, as Python's format and
   so the HTML report do (toFixed rounds it away from zero: 1.25 -> "1.3" where the report
   writes "1.2"). toFixed's long form is the double's exact decimal expansion, so a tie is
   recognised exactly, not by a scaled comparison. */
function fixed(v, nd) {
  const s = v.toFixed(nd);
  if (!Number.isFinite(v) || Math.abs(v) >= 1e21) return s;
  const exact = Math.abs(v).toFixed(Math.min(100, nd + 80));
  const dot = exact.indexOf(".");
  if (!/^50*$/.test(exact.slice(dot + 1 + nd))) return s;
  const down = nd === 0 ? exact.slice(0, dot) : exact.slice(0, dot + 1 + nd);
  if (Number(down[down.length - 1]) % 2 !== 0) return s;
  return (v < 0 ? "-" : "") + down;
}

function fmt(v, nd) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "number") return fixed(v, nd === undefined ? 1 : nd);
  return String(v);
}

function renderSummary() {
  const t = $("summary");
  const cols = [["scenario", null], ["MADRS baseline", "baseline_madrs"],
    ["MADRS 24 h", "madrs_24h"], ["lowest MADRS", "madrs_min"], ["MADRS at end", "madrs_end"],
    ["peak effect site (ng/mL, racemic-equivalent)", "peak_effect_site_ng_per_ml"], ["peak CADSS", "peak_cadss"],
    ["peak ΔSBP (mmHg)", "peak_sbp_change_mmhg"], ["anaesthetic band", "anaesthetic_band"],
    ["PK model", "model"], ["server ms", null]];
  t.tHead.innerHTML = "<tr>" + cols.map(([h]) => `<th scope="col">${h}</th>`).join("") + "</tr>";
  const tb = t.tBodies[0];
  tb.innerHTML = "";
  ks.results.forEach((r, i) => {
    if (!r) return;
    const tr = document.createElement("tr");
    cols.forEach(([, k], j) => {
      const td = document.createElement(j === 0 ? "th" : "td");
      if (j === 0) { td.scope = "row"; td.textContent = LABELS[i]; }
      else if (k === null) td.textContent = fmt(r.metadata.wall_ms, 0);
      else td.textContent = fmt(r.summary[k]);
      tr.appendChild(td);
    });
    tb.appendChild(tr);
  });
  scrollersFocusable();
}

/* A table box that scrolls sideways (a narrow screen, WCAG 1.4.10) is a named region and a
   Tab stop, so the keyboard can scroll it; one that fits stays out of the tab order. */
function scrollersFocusable() {
  for (const box of document.querySelectorAll(".table-scroll")) {
    if (box.scrollWidth > box.clientWidth + 1) {
      box.tabIndex = 0;
      box.setAttribute("role", "region");
      box.setAttribute("aria-label", `${box.dataset.name} (scrolls sideways)`);
    } else {
      for (const a of ["tabindex", "role", "aria-label"]) box.removeAttribute(a);
    }
  }
}

/* Idempotent: attaches the handler to each plot once it exists (a page opened from a link
   with an invalid value has no plots until the value is fixed). */
let linkBusy = false;
const linked = new Set();
function linkAxes() {
  for (const id of PLOT_IDS) {
    if (linked.has(id) || typeof $(id).on !== "function") continue;
    linked.add(id);
    $(id).on("plotly_afterplot", () => modebarOutOfTabOrder($(id)));
    $(id).on("plotly_relayout", (ev) => {
      if (linkBusy) return;
      const upd = {};
      if ("xaxis.range[0]" in ev) {
        upd["xaxis.range"] = [ev["xaxis.range[0]"], ev["xaxis.range[1]"]];
      } else if (ev["xaxis.autorange"]) {
        upd["xaxis.autorange"] = true;
      } else {
        return;
      }
      linkBusy = true;
      Promise.all(PLOT_IDS.filter((o) => o !== id && linked.has(o))
        .map((o) => Plotly.relayout(o, upd)))
        .finally(() => { linkBusy = false; });
    });
  }
}

// ------------------------------------------------------------------ simulate
/* Every change asks the server at once (no debounce: a request takes a few ms, and a newer
   change simply supersedes an older one: its answer is dropped), unless the page can tell
   that the server would refuse a value (a number out of its field's range, a dose without a
   unit yet while typing: `num`, `inputProblem`): then the error line names the field and
   nothing is sent. Answers are cached per request, and a change that leaves every request as
   it was (e.g. the `change` event after `input`) draws nothing. */
async function update() {
  const seq = ++ks.seq;
  const t0 = performance.now();
  ks.updateStart = t0;
  let at = ks.state.active;  // the scenario an error belongs to
  try {
    const reqs = ks.state.scenarios.map((sc, i) => { at = i; return simulateRequest(sc, i); });
    const keys = reqs.map((rq) => JSON.stringify(rq));
    const drawn = JSON.stringify([keys, logAxis()]);
    if (drawn === ks.drawn) {
      showError(null);
      return;
    }
    const res = await Promise.all(reqs.map(async (rq, i) => {
      const key = keys[i];
      if (ks.cache.has(key)) return ks.cache.get(key);
      const body = await postJSON("/api/simulate", rq).catch((e) => { e.scenario = i; throw e; });
      if (ks.cache.size > 64) ks.cache.clear();
      ks.cache.set(key, body);
      return body;
    }));
    if (seq !== ks.seq) return;  // a newer change is on its way
    showError(null);
    const t1 = performance.now();
    ks.results = res;
    await renderPlots();
    linkAxes();
    if (seq !== ks.seq) return;
    ks.drawn = drawn;
    const t2 = performance.now();
    ks.lastFetchMs = t1 - t0;
    ks.lastRenderMs = t2 - t1;
    ks.lastUpdateMs = t2 - t0;
    ks.updates += 1;
    $("status").textContent = `Updated in ${ks.lastUpdateMs.toFixed(0)} ms (server and ` +
      `transfer ${ks.lastFetchMs.toFixed(0)} ms, nine plots ${ks.lastRenderMs.toFixed(0)} ms)`;
    document.body.dataset.updates = String(ks.updates);
  } catch (e) {
    if (seq !== ks.seq) return;
    showError(e, e.scenario ?? at);
  }
}

/* Marks the field at fault (an element id, or null) in `form`: aria-invalid (and outlined),
   with the error line `msgId` added to its aria-describedby, so a screen reader reads the
   problem with the field; the mark of the field marked before goes. */
function markField(form, id, msgId) {
  for (const el of $(form).querySelectorAll("[aria-invalid]")) {
    el.removeAttribute("aria-invalid");
    const rest = (el.getAttribute("aria-describedby") || "").split(" ")
      .filter((x) => x && x !== msgId).join(" ");
    if (rest) el.setAttribute("aria-describedby", rest); else el.removeAttribute("aria-describedby");
  }
  const el = id && $(id);
  if (!el || !$(form).contains(el)) return;
  el.setAttribute("aria-invalid", "true");
  const ids = (el.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
  if (!ids.includes(msgId)) el.setAttribute("aria-describedby", [...ids, msgId].join(" "));
}

/* The error line under the form (null clears it). The field at fault, if the form shows its
   scenario, is marked (markField). */
/* Sets a live region's text only when it changes: rewriting the same text replaces its text
   node, which screen readers announce again (an alert repeated on every keystroke). */
function setLive(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}

function showError(e, scenario) {
  setLive("error", e ? `Scenario ${LABELS[scenario]}: ${e.message}` : "");
  markField("form", e && e.field && scenario === ks.state.active ? e.field : null, "error");
}

function showTrialError(e) {
  setLive("trial-error", e ? `Trial: ${e.message}` : "");
  markField("trial-form", e && e.field, "trial-error");
}

function changed() {
  readForm();
  encodeState();
  update();
}

// ------------------------------------------------------------------ trial
function trialScenario() {
  const t = ks.state.trial;
  const a = ks.state.scenarios[0];
  const arms = ks.state.scenarios.map((sc, i) => armOf(sc, LABELS[i]))
    .filter((arm) => arm.control === undefined);
  if (t.control) arms.push({name: "placebo", control: t.control});
  return {title: "ketasim web trial",
    population: {disorder: a.disorder, n: num(t.n, "t-n"), seed: num(t.seed, "t-seed")},
    arm: arms,
    endpoints: {at: t.at.split(",").map((v) => v.trim()).filter(Boolean)}};
}

async function runTrial(ev) {
  ev.preventDefault();
  readForm();
  showTrialError(null);
  $("trial-results").innerHTML = "";
  $("trial-downloads").innerHTML = "";
  try {
    const scenario = trialScenario();
    const job = await postJSON("/api/trial", scenario, scenario.arm.map((a) => a.name));
    ks.state.trial.job = job.id;
    encodeState();
    poll(job.id);
  } catch (e) {
    showTrialError(e);
  }
}

/* The trial's progress for screen readers (#trial-status, a live region always on the page:
   one inside the hidden progress row would not be tracked): each change of stage and each
   quarter of the patients, not every poll. */
function announceTrial(j) {
  const quarter = Math.floor(4 * (j.progress || 0));
  const key = `${j.status}|${quarter}`;
  if (ks.trialAnnounced === key) return;
  ks.trialAnnounced = key;
  const pct = `${Math.round(100 * (j.progress || 0))}%`;
  $("trial-status").textContent = j.status === "done"
    ? `Trial done: ${j.total} patients; results below.`
    : `Trial ${j.status}: ${pct} (${j.done} of ${j.total} patients).`;
}

async function poll(id) {
  $("trial-progress").hidden = false;
  $("run-trial").disabled = true;
  ks.trialAnnounced = null;
  try {
    for (;;) {
      const r = await fetch(`/api/trial/${encodeURIComponent(id)}`);
      const j = await r.json();
      if (!r.ok) throw new Error(errorText(j));
      $("progress-bar").value = j.progress;
      $("progress-text").textContent = `${j.status}: ${j.done} / ${j.total} patients`;
      if (j.status === "done") { await showResult(j); announceTrial(j); break; }
      if (j.status === "failed") throw new Error(j.error || "failed");
      announceTrial(j);
      await new Promise((res) => setTimeout(res, 400));
    }
  } catch (e) {
    showTrialError(e);  // the error line is an alert
    $("trial-status").textContent = "";
  } finally {
    $("run-trial").disabled = false;
  }
}

function cell(tr, text, header) {
  const c = document.createElement(header ? "th" : "td");
  if (header) c.scope = header;
  c.textContent = text;
  tr.appendChild(c);
}

function pp(v) {
  return v === null || v === undefined ? "–" : `${v >= 0 ? "+" : ""}${fixed(100 * v, 0)}`;
}
function pct(v) { return v === null || v === undefined ? "–" : `${fixed(100 * v, 0)}%`; }
/* A confidence bound to one decimal, or to its first significant digit when it is not 0 but
   would read 0.0 or -0.0 (so "[-3.8, -0.0]" does not hide whether the interval excludes 0:
   "[-3.8, -0.004]"), as the HTML report (ketasim.report._bound). */
function bound(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  let nd = 1;
  if (v !== 0 && Math.abs(v) < 0.05 && Number(Math.abs(v).toFixed(1)) === 0) {
    nd = Math.min(7, Math.max(1, -Math.floor(Math.log10(Math.abs(v)))));
  }
  return fixed(v, nd);
}
function ci(c) { return c && c[0] !== null ? `[${bound(c[0])}, ${bound(c[1])}]` : "–"; }

async function showResult(job) {
  const r = await fetch(job.links.result);
  const s = await r.json();
  const dl = $("trial-downloads");
  dl.innerHTML = "Downloads: ";
  for (const [name, label] of [["results.csv", "CSV"], ["results.parquet", "Parquet"],
    ["report.html", "HTML report"], ["summary.json", "summary JSON"]]) {
    const a = document.createElement("a");
    a.href = job.links[name];
    a.textContent = label;
    a.setAttribute("download", "");
    dl.appendChild(a);
  }
  const box = $("trial-results");
  box.innerHTML = "";
  const scale = s.meta.scale.toUpperCase();
  const wrap = document.createElement("div");
  wrap.className = "results-arms";
  for (const [arm, rows] of Object.entries(s.arms)) {
    const t = document.createElement("table");
    t.className = "data trial-table";
    const cap = t.createCaption();
    const a = s.arm_summary[arm];
    cap.textContent = `${arm}: ${a.treatment} (n = ${a.n}, baseline ${fmt(a.baseline_mean)})`;
    const hr = t.createTHead().insertRow();
    for (const h of ["visit", `mean ${scale}`, "change", "95% CI", "response", "remission",
      "CADSS"]) cell(hr, h, "col");
    const tb = t.createTBody();
    for (const [v, row] of Object.entries(rows)) {
      const tr = tb.insertRow();
      cell(tr, v, "row");
      cell(tr, fmt(row.mean));
      cell(tr, fmt(row.change));
      cell(tr, ci(row.ci95));
      cell(tr, pct(row.response_rate));
      cell(tr, pct(row.remission_rate));
      cell(tr, fmt(row.cadss_mean));
    }
    wrap.appendChild(t);
  }
  box.appendChild(wrap);
  for (const [pair, rows] of Object.entries(s.differences)) {
    const t = document.createElement("table");
    t.className = "data";
    const arms = (s.pairs || {})[pair];
    const label = arms ? `${arms[0]} vs ${arms[1]}` : pair;
    t.createCaption().textContent = `Difference ${label} in mean change (negative favours the first)`;
    const hr = t.createTHead().insertRow();
    for (const h of ["visit", "difference", "95% CI", "p", "Cohen's d",
                     "response difference (percentage points)"]) {
      cell(hr, h, "col");
    }
    const tb = t.createTBody();
    for (const [v, d] of Object.entries(rows)) {
      const tr = tb.insertRow();
      cell(tr, v, "row");
      cell(tr, fmt(d.difference));
      cell(tr, ci(d.ci95));
      cell(tr, d.p_value === null ? "–" : (d.p_value < 1e-4 ? "<0.0001" : fixed(d.p_value, 4)));
      cell(tr, fmt(d.cohens_d, 2));
      cell(tr, pp(d.response_rate_difference));
    }
    box.appendChild(t);
  }
  const p = document.createElement("p");
  p.className = "muted";
  p.textContent = `seed ${s.meta.seed} · ketasim ${s.meta.ketasim_version} · ${s.meta.wall_s} s · ${s.meta.disclaimer}`;
  box.appendChild(p);
  scrollersFocusable();
}

// ------------------------------------------------------------------ start
async function start() {
  const [opt, health] = await Promise.all([fetch("/api/options").then((r) => r.json()),
    fetch("/api/health").then((r) => r.json())]);
  ks.options = opt;
  $("version").textContent = health.version;
  $("t-n").max = health.limits.max_n;
  buildForm();
  const s = decodeState();
  if (s) ks.state = s;
  else ks.state.scenarios = [{...DEFAULT_SCENARIO}];
  writeForm();
  encodeState();
  for (const el of $("form").querySelectorAll("input, select")) {
    el.addEventListener("input", changed);
    el.addEventListener("change", changed);
  }
  for (const el of $("trial-form").querySelectorAll("input, select")) {
    el.addEventListener("change", () => { readForm(); encodeState(); });
  }
  $("form").addEventListener("submit", (e) => e.preventDefault());
  for (const id of PLOT_IDS) $(`${id}-legend`).addEventListener("keydown", legendKeys);
  $("x-axis").value = logAxis() ? "log" : "linear";
  $("x-axis").addEventListener("change", () => {
    ks.state.axis = $("x-axis").value;
    encodeState();
    update();
  });
  $("trial-form").addEventListener("submit", runTrial);
  $("tabs").addEventListener("keydown", tabKeys);
  const resized = new ResizeObserver(scrollersFocusable);
  for (const box of document.querySelectorAll(".table-scroll")) resized.observe(box);
  $("add-scenario").addEventListener("click", () => {
    if (ks.state.scenarios.length >= 4) return;
    const copy = JSON.parse(JSON.stringify(ks.state.scenarios[ks.state.active]));
    ks.state.scenarios.push(copy);
    ks.state.active = ks.state.scenarios.length - 1;
    writeForm();
    encodeState();
    update();
  });
  $("remove-scenario").addEventListener("click", () => {
    if (ks.state.scenarios.length <= 1) return;
    ks.state.scenarios.splice(ks.state.active, 1);
    ks.state.active = Math.max(0, ks.state.active - 1);
    writeForm();
    encodeState();
    update();
  });
  await update();
  linkAxes();
  if (ks.state.trial.job) poll(ks.state.trial.job);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", () => {
  start().catch((e) => { $("error").textContent = `Could not start: ${e.message}`; });
});
