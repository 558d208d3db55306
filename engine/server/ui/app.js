// The trace browser of `engine serve`: plain JavaScript, no build step, nothing from elsewhere.
// Every value shown comes from the server's own query routes and is put into the page as
// text (never as HTML), so a call's inputs can never run as code here.
"use strict";

const PAGE_ROWS = 50;
const TRACE_MAX_CALLS = 2000;
const OPEN_MAX_ENTRIES = 50;
const JSON_SLICE = 500;
// what the calls list and a trace's tree show of each call (summary: tokens, cost,
// feedback); a call's own page reads its whole row
const LIST_COLUMNS = ["id", "trace_id", "parent_id", "op_name", "display_name", "started_at",
                      "ended_at", "exception", "summary"];
const TREE_COLUMNS = ["id", "parent_id", "op_name", "started_at", "ended_at", "exception"];
// an evaluation run as the evaluations page and the compare page show it: its evaluation
// and model (refs in its inputs), its scores (its output) and its call counts (summary)
const RUN_COLUMNS = ["id", "op_name", "display_name", "started_at", "ended_at", "exception",
                     "inputs", "output", "summary"];
// a prediction as the compare page shows it: its example (inputs), its scores and the
// start of its answer (output: the answer a preview, /ui/calls/stream_query)
const PREDICTION_COLUMNS = ["id", "started_at", "exception", "inputs", "output"];
const KEY_STORE = "engine-api-key";
// the path prefix of a reverse proxy in front (engine serve --root-path), "" without one:
// every URL this page builds starts with it
const ROOT = document.documentElement.dataset.rootPath || "";
let apiKey = sessionStorage.getItem(KEY_STORE) || "";

// -- talking to the server ----------------------------------------------------------------

// the server's reason for an error answer: its body's reason (or detail), else the body
function reasonOf(text) {
  try {
    const body = JSON.parse(text);
    return (body && (body.reason || body.detail)) || text;
  } catch (err) {
    return text;
  }
}

async function request(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = "Basic " + btoa("api:" + apiKey);
  const init = { method: body === undefined ? "GET" : "POST", headers };
  if (body !== undefined) init.body = JSON.stringify(body);
  // from the origin: a page opened at http://api:KEY@host/ has the key in its own URL,
  // which fetch refuses in a request's (the browser sends it from its own store)
  const res = await fetch(location.origin + ROOT + path, init);
  const text = await res.text();
  if (res.status === 401) {
    document.getElementById("keyform").hidden = false;
    throw new Error("This server needs an API key: enter it at the top right.");
  }
  if (res.status === 403) {  // a key, but not one for this: another key may do
    document.getElementById("keyform").hidden = false;
  }
  if (!res.ok) throw new Error(`${path} answered HTTP ${res.status}: ${reasonOf(text)}`);
  return text;
}

const getJson = async (path, body) => JSON.parse(await request(path, body));
const getLines = async (path, body) =>
  (await request(path, body)).split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));

// -- building the page ----------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// a link inside a row that opens on a click itself (a call in a list): the row must not
// see the click too, or it opens the page a second time (two history entries) or, on a
// click into a new tab, opens it here as well
function link(href, text, cls) {
  return el("a", { href, class: cls, onclick: (ev) => {
    ev.stopPropagation();
    if (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
    ev.preventDefault();
    go(href);
  } }, text);
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}

function go(href) {
  history.pushState(null, "", href);
  render();
}

function fail(err) {
  show(el("p", { class: "error", id: "error" }, String(err.message || err)));
}

// -- what a call says about itself ---------------------------------------------------------

function opLabel(opName) {
  if (!opName) return "?";
  if (opName.startsWith("weave:")) return opName.split("/").pop().split(":")[0];
  return opName;
}

function statusOf(call) {
  if (call.exception) return "error";
  return call.ended_at ? "success" : "running";
}

// the server's times carry microseconds, which Date drops: keep them for short calls
function epochMicros(text) {
  const match = /\.(\d+)/.exec(text);
  const fraction = match ? Number((match[1] + "000000").slice(0, 6)) : 0;
  return Math.floor(Date.parse(text) / 1000) * 1e6 + fraction;
}

function latencyMs(call) {
  if (!call.ended_at || !call.started_at) return null;
  return (epochMicros(call.ended_at) - epochMicros(call.started_at)) / 1000;
}

function formatMs(ms) {
  if (ms === null) return "…";
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(0)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

function formatTime(text) {
  if (!text) return "";
  const d = new Date(text);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

// the sum of the finite numbers among values, null when there are none: the server keeps
// summaries as clients sent them, so one call's count of another type must not break a page
function sumOf(values) {
  const numbers = values.filter((v) => typeof v === "number" && Number.isFinite(v));
  return numbers.length ? numbers.reduce((a, b) => a + b, 0) : null;
}

function tokensOf(call) {
  const usage = (call.summary || {}).usage;
  if (!isObject(usage)) return null;
  return sumOf(Object.values(usage).filter(isObject).map((u) => sumOf([u.total_tokens]) ||
    sumOf([u.prompt_tokens || u.input_tokens, u.completion_tokens || u.output_tokens])));
}

function costOf(call) {
  const costs = ((call.summary || {}).weave || {}).costs;
  if (!isObject(costs)) return null;
  return sumOf(Object.values(costs).filter(isObject).map((c) =>
    sumOf([c.prompt_tokens_total_cost, c.completion_tokens_total_cost])));
}

// a project's path (under the root path), each of its two names encoded: a name with %, ?
// or # stays one name
function projectPath(project) {
  const at = project.indexOf("/");
  return `${ROOT}/${encodeURIComponent(project.slice(0, at))}/${encodeURIComponent(project.slice(at + 1))}`;
}

// a name "." or ".." cannot be a part of a path: browsers resolve it, encoded or not
function pathCarries(project) {
  return project.split("/").every((part) => part !== "." && part !== "..");
}

function callHref(project, id) { return `${projectPath(project)}/r/call/${encodeURIComponent(id)}`; }

// -- the calls list ------------------------------------------------------------------------

// the status weave's own UI filters on: a field the server derives for every call
function statusExpr(status) {
  return { $eq: [{ $getField: "summary.weave.status" }, { $literal: status }] };
}

function contains(field, text, asString) {
  const input = asString ? { $convert: { input: { $getField: field }, to: "string" } }
                         : { $getField: field };
  return { $contains: { input, substr: { $literal: text }, case_insensitive: true } };
}

function callsQuery(params) {
  const terms = [];
  if (params.op) terms.push(contains("op_name", params.op));
  if (params.status) terms.push(statusExpr(params.status));
  if (params.q) {
    terms.push({ $or: ["op_name", "display_name", "id", "trace_id", "exception"]
      .map((f) => contains(f, params.q))
      .concat(["inputs", "output", "attributes", "summary"].map((f) => contains(f, params.q, true))) });
  }
  if (!terms.length) return undefined;
  return { $expr: terms.length === 1 ? terms[0] : { $and: terms } };
}

function readParams() {
  const s = new URLSearchParams(location.search);
  return { op: s.get("op") || "", status: s.get("status") || "", q: s.get("q") || "",
           roots: s.get("roots") !== "0", page: Math.max(0, parseInt(s.get("page") || "0", 10) || 0) };
}

// this page with the given query parameters (those without a value left out)
function queryHref(values) {
  const s = new URLSearchParams();
  for (const [name, value] of Object.entries(values)) if (value) s.set(name, String(value));
  const text = s.toString();
  return location.pathname + (text ? "?" + text : "");
}

function paramsHref(params) {
  return queryHref({ op: params.op, status: params.status, q: params.q,
                     roots: params.roots ? "" : "0", page: params.page });
}

// newer / older pages of PAGE_ROWS; rangeText(first, last) says which rows show
function pager(page, shown, count, hrefOf, rangeText) {
  const first = page * PAGE_ROWS;
  return el("div", { class: "pager" },
    el("button", { id: "prev", disabled: page === 0, onclick: () => go(hrefOf(page - 1)) }, "← Newer"),
    el("span", { id: "range" }, rangeText(first, first + shown)),
    el("button", { id: "next", disabled: first + shown >= count,
                   onclick: () => go(hrefOf(page + 1)) }, "Older →"));
}

function filterForm(params) {
  const op = el("input", { name: "op", placeholder: "op name contains…", value: params.op, id: "f-op" });
  const q = el("input", { name: "q", placeholder: "text anywhere…", value: params.q, id: "f-text" });
  const status = el("select", { name: "status", id: "f-status" },
    ["", "success", "error", "running"].map((s) => el("option", { value: s, selected: s === params.status }, s || "any status")));
  const roots = el("input", { type: "checkbox", name: "roots", id: "f-roots", checked: params.roots });
  return el("form", { class: "filters", id: "filters", onsubmit: (ev) => {
    ev.preventDefault();
    go(paramsHref({ op: op.value.trim(), q: q.value.trim(), status: status.value,
                    roots: roots.checked, page: 0 }));
  } }, op, status, q, el("label", {}, roots, " root calls only"), el("button", { type: "submit" }, "Filter"));
}

// -- feedback: weave's kinds (a reaction, a note, a scorer's result), any other kind as is ----

const FEEDBACK_MAX = 500;
const RUNNABLE = "wandb.runnable.";

function feedbackClass(type) {
  if (type === "wandb.reaction.1") return "reaction";
  if (type === "wandb.note.1") return "note";
  if (typeof type === "string" && type.startsWith(RUNNABLE)) return "score";
  return "other";
}

function feedbackValue(row) {
  const payload = isObject(row.payload) ? row.payload : {};
  return { reaction: short(payload.emoji),
           note: typeof payload.note === "string" ? payload.note : short(payload.note), score: short(payload.output),
           other: short(row.payload) }[feedbackClass(row.feedback_type)];
}

function feedbackKind(type) {
  const kind = feedbackClass(type);
  return kind === "score" ? `scorer ${type.slice(RUNNABLE.length)}` : kind === "other" ? short(type) : kind;
}

// a call's feedback in a few characters: its reactions (with counts), how many notes and
// scorer results, how many of any other kind
function feedbackBrief(rows) {
  const reactions = new Map(), counts = { note: 0, score: 0, other: 0 };
  for (const row of Array.isArray(rows) ? rows.filter(isObject) : []) {
    const kind = feedbackClass(row.feedback_type);
    if (kind === "reaction") {
      const emoji = short((isObject(row.payload) ? row.payload : {}).emoji);
      reactions.set(emoji, (reactions.get(emoji) || 0) + 1);
    } else counts[kind] += 1;
  }
  const parts = [...reactions].map(([emoji, n]) => (n > 1 ? `${emoji}${n}` : emoji));
  for (const [kind, n] of Object.entries(counts)) if (n) parts.push(`${n} ${kind}${n === 1 ? "" : "s"}`);
  return parts.join(" · ");
}

async function callsPage(project) {
  const params = readParams();
  show(el("h1", {}, "Calls"), filterForm(params), el("p", { class: "muted" }, "Loading…"));
  const filter = params.roots ? { trace_roots_only: true } : undefined;
  const query = callsQuery(params);
  const [stats, calls] = await Promise.all([
    getJson("/calls/query_stats", { project_id: project, filter, query }),
    getLines("/calls/stream_query", { project_id: project, filter, query, limit: PAGE_ROWS,
      offset: params.page * PAGE_ROWS, sort_by: [{ field: "started_at", direction: "desc" }],
      columns: LIST_COLUMNS, include_feedback: true }),
  ]);
  const rows = calls.map((call) => {
    const tokens = tokensOf(call), cost = costOf(call), status = statusOf(call);
    const name = call.display_name || opLabel(call.op_name);
    return el("tr", { class: "row", "data-id": call.id, onclick: () => go(callHref(project, call.id)) },
      el("td", { class: "op", title: name }, link(callHref(project, call.id), name)),
      el("td", {}, el("span", { class: `status ${status}` }, status)),
      el("td", { class: "num" }, formatMs(latencyMs(call))),
      el("td", {}, formatTime(call.started_at)),
      el("td", { class: "num" }, tokens === null ? "" : tokens.toLocaleString()),
      el("td", { class: "num" }, cost === null ? "" : "$" + cost.toFixed(4)),
      el("td", { class: "feedback" }, feedbackBrief(((call.summary || {}).weave || {}).feedback || [])),
      el("td", {}, el("code", {}, call.id.slice(-12))));
  });
  const pages = Math.max(1, Math.ceil(stats.count / PAGE_ROWS));
  const paging = pager(params.page, calls.length, stats.count,
    (page) => paramsHref({ ...params, page }),
    (first, last) => stats.count ? `${(first + 1).toLocaleString()}–${last.toLocaleString()} of ${stats.count.toLocaleString()} calls (page ${params.page + 1} of ${pages.toLocaleString()})` : "no calls match");
  show(el("h1", {}, "Calls"), filterForm(params),
    el("table", { id: "calls" },
      el("thead", {}, el("tr", {}, ["Op", "Status", "Latency", "Started", "Tokens", "Cost", "Feedback", "Id"]
        .map((h, i) => el("th", { class: [2, 4, 5].includes(i) ? "num" : undefined }, h)))),
      el("tbody", {}, rows)),
    paging);
}

// -- one call: its trace tree and everything it carries -------------------------------------

// the entries of an object or a list from ``from`` on, JSON_SLICE of them and a button for
// the next: a list of a million numbers is a few hundred nodes until asked for more
function jsonEntries(value, keys, from, depth) {
  const count = keys ? keys.length : value.length, until = Math.min(count, from + JSON_SLICE);
  const nodes = [];
  for (let i = from; i < until; i += 1) {
    nodes.push(keys ? jsonNode(value[keys[i]], keys[i], depth) : jsonNode(value[i], String(i), depth));
  }
  if (until < count) {
    const more = el("li", { class: "more" }, el("button", { type: "button",
      onclick: () => more.replaceWith(...jsonEntries(value, keys, until, depth)) },
      `… ${(count - until).toLocaleString()} more: show ${Math.min(JSON_SLICE, count - until).toLocaleString()}`));
    nodes.push(more);
  }
  return nodes;
}

function jsonNode(value, key, depth) {
  const label = key === undefined ? [] : [el("span", { class: "k" }, key), ": "];
  if (value === null || typeof value !== "object") {
    const cls = typeof value === "string" ? "s" : typeof value === "number" ? "n" : "b";
    return el("li", {}, label, el("span", { class: cls }, JSON.stringify(value)));
  }
  const keys = Array.isArray(value) ? null : Object.keys(value);
  const count = keys ? keys.length : value.length;
  // open the first levels of what is small enough to read; the rest one click away, built
  // on that click (a closed node is one element, whatever it holds)
  const open = depth < 4 && count <= OPEN_MAX_ENTRIES;
  const list = el("ul", {}, open ? jsonEntries(value, keys, 0, depth + 1) : []);
  const details = el("details", { class: "json", open, ontoggle: () => {
    if (details.open && !list.hasChildNodes()) list.append(...jsonEntries(value, keys, 0, depth + 1));
  } }, el("summary", {}, label, el("span", { class: "muted" }, keys ? `{${count}}` : `[${count}]`)), list);
  return el("li", {}, details);
}

function jsonView(value, id) {
  if (value === null || value === undefined) return el("p", { class: "muted" }, "none");
  return el("ul", { class: "json", id }, jsonNode(value, undefined, 0));
}

function traceTree(project, calls, currentId) {
  const children = new Map();
  const ids = new Set(calls.map((c) => c.id));
  for (const call of calls) {
    const parent = call.parent_id && ids.has(call.parent_id) ? call.parent_id : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(call);
  }
  const branch = (parent) => el("ul", {}, (children.get(parent) || []).map((call) =>
    el("li", {}, link(callHref(project, call.id), opLabel(call.op_name), call.id === currentId ? "current" : undefined),
      " ", el("span", { class: `status ${statusOf(call)}` }, "●"),
      " ", el("span", { class: "muted" }, formatMs(latencyMs(call))),
      children.has(call.id) ? branch(call.id) : null)));
  return el("div", { class: "tree", id: "tree" }, el("h2", {}, "Trace"), branch(null),
    calls.length >= TRACE_MAX_CALLS ? el("p", { class: "muted" }, `first ${TRACE_MAX_CALLS} calls`) : null);
}

function facts(project, call) {
  const tokens = tokensOf(call), cost = costOf(call), status = statusOf(call);
  const rows = [
    ["Status", el("span", { class: `status ${status}` }, status)],
    ["Latency", formatMs(latencyMs(call))],
    ["Started", formatTime(call.started_at)],
    ["Ended", formatTime(call.ended_at) || "still running"],
    ["Tokens", tokens === null ? null : tokens.toLocaleString()],
    ["Cost", cost === null ? null : "$" + cost.toFixed(6)],
    ["Op", el("code", {}, call.op_name)],
    ["Call id", el("code", {}, call.id)],
    ["Trace id", el("code", {}, call.trace_id)],
    ["Parent", call.parent_id ? link(callHref(project, call.parent_id), call.parent_id) : "none (a root call)"],
  ];
  return el("dl", { class: "facts", id: "facts" },
    rows.filter(([, v]) => v !== null).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function feedbackTable(rows) {
  return el("table", { id: "feedback" },
    el("thead", {}, el("tr", {}, ["Kind", "Value", "By", "When"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((row) => el("tr", {},
      el("td", {}, feedbackKind(row.feedback_type)),
      el("td", { class: "output" }, feedbackValue(row)),
      el("td", { class: "muted" }, row.creator || row.wb_user_id || ""),
      el("td", { class: "muted" }, formatTime(row.created_at))))),
    rows.length >= FEEDBACK_MAX ? el("caption", { class: "muted" }, `first ${FEEDBACK_MAX} only`) : null);
}

async function callPage(project, id) {
  show(el("p", { class: "muted" }, "Loading…"));
  const { call } = await getJson("/call/read", { project_id: project, id });
  if (!call) {
    show(el("p", { class: "error", id: "error" }, `No call ${id} in project ${project}.`),
      link(`${projectPath(project)}/weave/calls`, "All calls"));
    return;
  }
  const trace = await getLines("/calls/stream_query", { project_id: project,
    filter: { trace_ids: [call.trace_id] }, limit: TRACE_MAX_CALLS, columns: TREE_COLUMNS,
    sort_by: [{ field: "started_at", direction: "asc" }] });
  const feedback = (await getJson("/feedback/query", { project_id: project,
    query: { $expr: { $eq: [{ $getField: "weave_ref" }, { $literal: `weave:///${project}/call/${call.id}` }] } },
    sort_by: [{ field: "created_at", direction: "asc" }], limit: FEEDBACK_MAX })).result || [];
  const sections = [
    call.exception ? [el("h2", {}, "Exception"), el("pre", { class: "exception", id: "exception" }, call.exception)] : [],
    feedback.length ? [el("h2", {}, "Feedback"), feedbackTable(feedback)] : [],
    el("h2", {}, "Inputs"), jsonView(call.inputs, "inputs"),
    el("h2", {}, "Output"), jsonView(call.output, "output"),
    el("h2", {}, "Attributes"), jsonView(call.attributes, "attributes"),
    el("h2", {}, "Summary"), jsonView(call.summary, "summary"),
  ];
  show(el("h1", { id: "call-title" }, call.display_name || opLabel(call.op_name)),
    el("div", { class: "call" }, traceTree(project, trace, call.id),
      el("div", {}, facts(project, call), sections)));
}

// -- objects and tables ----------------------------------------------------------------------

async function objectsPage(project) {
  show(el("h1", {}, "Objects"), el("p", { class: "muted" }, "Loading…"));
  const { objs } = await getJson("/objs/query", { project_id: project,
    filter: { latest_only: true }, limit: 1000 });
  const rows = objs.map((obj) => {
    const detail = el("tr", { hidden: true }, el("td", { colspan: 5 }, jsonView(obj.val)));
    return [el("tr", { class: "row", onclick: () => { detail.hidden = !detail.hidden; } },
      el("td", {}, obj.object_id),
      el("td", {}, obj.base_object_class || obj.leaf_object_class || obj.kind),
      el("td", { class: "num" }, `v${obj.version_index}`),
      el("td", {}, el("code", {}, obj.digest.slice(0, 12))),
      el("td", {}, formatTime(obj.created_at))), detail];
  });
  show(el("h1", {}, "Objects"),
    objs.length ? el("table", { id: "objects" },
      el("thead", {}, el("tr", {}, ["Name", "Class", "Version", "Digest", "Created"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)) : el("p", { class: "muted" }, "No objects in this project."));
}

function tableRefs(value, found) {
  if (typeof value === "string") {
    const m = value.match(/^weave:\/\/\/[^/]+\/[^/]+\/table\/([0-9a-zA-Z]+)/);
    if (m) found.add(m[1]);
  } else if (value && typeof value === "object") {
    for (const v of Object.values(value)) tableRefs(v, found);
  }
  return found;
}

async function tablesPage(project) {
  show(el("h1", {}, "Tables"), el("p", { class: "muted" }, "Loading…"));
  const { objs } = await getJson("/objs/query", { project_id: project, filter: { latest_only: true }, limit: 1000 });
  const owners = new Map();
  for (const obj of objs) for (const d of tableRefs(obj.val, new Set())) owners.set(d, obj.object_id);
  const digests = [...owners.keys()];
  const { tables } = digests.length ? await getJson("/table/query_stats_batch", { project_id: project, digests })
                                    : { tables: [] };
  const view = el("div", { id: "table-rows" });
  const rows = tables.map((t) => el("tr", { class: "row", onclick: () => tableRows(project, t.digest, view) },
    el("td", {}, el("code", {}, t.digest.slice(0, 16))), el("td", {}, owners.get(t.digest)),
    el("td", { class: "num" }, t.count.toLocaleString())));
  show(el("h1", {}, "Tables"),
    rows.length ? el("table", { id: "tables" },
      el("thead", {}, el("tr", {}, ["Table", "Used by", "Rows"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)) : el("p", { class: "muted" }, "No tables referenced by this project's objects."),
    view);
}

async function tableRows(project, digest, view) {
  view.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  const { rows } = await getJson("/table/query", { project_id: project, digest, limit: PAGE_ROWS });
  const columns = [...new Set(rows.flatMap((r) => (r.val && typeof r.val === "object" ? Object.keys(r.val) : ["value"])))].slice(0, 10);
  const cell = (v) => { const t = typeof v === "string" ? v : JSON.stringify(v); return t && t.length > 120 ? t.slice(0, 117) + "…" : t; };
  view.replaceChildren(el("h2", {}, `Table ${digest.slice(0, 16)}: first ${rows.length} rows`),
    el("table", {}, el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c)))),
      el("tbody", {}, rows.map((r) => el("tr", {}, columns.map((c) =>
        el("td", {}, cell(r.val && typeof r.val === "object" ? r.val[c] : r.val))))))));
}

// -- evaluations: weave's Evaluation.evaluate runs with their scores side by side ----------------

const EVAL_OP = "Evaluation.evaluate";
const METRIC_COLUMNS = 16;

// weave:///entity/project/object/QA:<digest> → { name: "QA", digest }
function refParts(ref) {
  const m = typeof ref === "string" && /^weave:\/\/\/[^/]+\/[^/]+\/(?:object|op)\/([^:/]+):([^/]+)/.exec(ref);
  return m ? { name: m[1], digest: m[2] } : null;
}

// the numbers of an evaluation's output by dotted path, in the order they come (weave's
// summaries: {scorer: {field: {true_count, true_fraction} | {mean}}, model_latency: {mean}})
function metricLeaves(value, path, out) {
  if (typeof value === "number") out.set(path, value);
  else if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) metricLeaves(v, path ? `${path}.${k}` : k, out);
  }
  return out;
}

function formatMetric(path, value) {
  if (/fraction$/.test(path)) return `${(value * 100).toFixed(1)}%`;
  if (Number.isInteger(value)) return value.toLocaleString();
  return value.toLocaleString(undefined, { maximumSignificantDigits: 4 });
}

// what tells one model from another: its class and its settings (not its ops or refs)
function modelLabel(ref, val) {
  const parts = refParts(ref);
  if (!parts) return typeof ref === "string" ? ref : JSON.stringify(ref);
  if (!val || typeof val !== "object") return parts.name;
  const settings = Object.entries(val)
    .filter(([k, v]) => !k.startsWith("_") && v !== null && typeof v !== "object" &&
            !(typeof v === "string" && v.startsWith("weave:///")) &&
            !(k === "name" && v === parts.name))  // EvaluationLogger's models: name = class
    .map(([k, v]) => `${k}=${v}`);
  return settings.length ? `${parts.name} (${settings.join(", ")})` : parts.name;
}

// each ref's value; one the server no longer has (deleted, or never sent: weave's client
// skips objects its disk cache says it created, even on another server) stays unresolved
async function readRefs(refs) {
  if (!refs.length) return new Map();
  try {
    const { vals } = await getJson("/refs/read_batch", { refs });
    return new Map(refs.map((r, i) => [r, vals[i]]));
  } catch (err) {
    const vals = await Promise.all(refs.map((ref) =>
      getJson("/refs/read_batch", { refs: [ref] }).then((res) => res.vals[0], () => null)));
    return new Map(refs.map((r, i) => [r, vals[i]]));
  }
}

function evalParams() {
  const s = new URLSearchParams(location.search);
  return { name: s.get("eval") || "", page: Math.max(0, parseInt(s.get("page") || "0", 10) || 0) };
}

function evalHref(params) {
  return queryHref({ eval: params.name, page: params.page });
}

async function evaluationsPage(project) {
  const params = evalParams();
  show(el("h1", {}, "Evaluations"), el("p", { class: "muted" }, "Loading…"));
  // every version of weave's op, and the plain name engine's own tracer writes
  const filter = { op_names: [`weave:///${project}/op/${EVAL_OP}:*`, EVAL_OP] };
  if (params.name) filter.input_refs = [`weave:///${project}/object/${params.name}:*`];
  const [stats, calls, { objs }] = await Promise.all([
    getJson("/calls/query_stats", { project_id: project, filter }),
    getLines("/calls/stream_query", { project_id: project, filter, limit: PAGE_ROWS,
      offset: params.page * PAGE_ROWS, sort_by: [{ field: "started_at", direction: "desc" }],
      columns: RUN_COLUMNS }),
    getJson("/objs/query", { project_id: project,
      filter: { base_object_classes: ["Evaluation"], latest_only: true }, limit: 1000 }),
  ]);
  const refs = [...new Set(calls.flatMap((c) => [(c.inputs || {}).model, (c.inputs || {}).self])
    .filter((r) => refParts(r)))];
  const resolved = await readRefs(refs);
  const metrics = new Map(calls.map((c) => [c.id, metricLeaves(c.output, "", new Map())]));
  const columns = [...new Set([...metrics.values()].flatMap((m) => [...m.keys()]))].slice(0, METRIC_COLUMNS);

  const names = [...new Set(objs.map((o) => o.object_id))].sort();
  const choice = el("select", { id: "f-eval", onchange: () => go(evalHref({ name: choice.value, page: 0 })) },
    el("option", { value: "" }, "every evaluation"),
    names.map((n) => el("option", { value: n, selected: n === params.name }, n)));
  const picked = [];
  const compare = el("button", { id: "compare-runs", disabled: true, onclick: () => go(
    `${projectPath(project)}/weave/evaluations/compare?` +
    new URLSearchParams({ calls: calls.filter((c) => picked.includes(c.id)).map((c) => c.id).join(",") })) },
    "Compare selected");
  const pick = (id) => el("input", { type: "checkbox", class: "pick", title: "compare this run",
    onclick: (ev) => {
      ev.stopPropagation();
      if (ev.target.checked) picked.push(id); else picked.splice(picked.indexOf(id), 1);
      compare.disabled = picked.length < 2;
    } });
  const rows = calls.map((call) => {
    const inputs = call.inputs || {}, summary = call.summary || {};
    const counts = isObject(summary.status_counts) ? summary.status_counts : {};
    const ran = sumOf([counts.success, counts.error]), errors = sumOf([counts.error]);
    const evalRef = refParts(inputs.self), status = statusOf(call), m = metrics.get(call.id);
    return el("tr", { class: "row", "data-id": call.id, onclick: () => go(callHref(project, call.id)) },
      el("td", {}, pick(call.id)),
      el("td", { class: "op", title: call.display_name || opLabel(call.op_name) },
        link(callHref(project, call.id), call.display_name || opLabel(call.op_name))),
      el("td", {}, evalRef ? evalRef.name : ""),
      el("td", { class: "model", title: typeof inputs.model === "string" ? inputs.model : undefined },
        modelLabel(inputs.model, resolved.get(inputs.model))),
      el("td", {}, el("span", { class: `status ${status}` }, status)),
      el("td", { class: "num" }, ran || ""),
      el("td", { class: "num" + (errors ? " error" : "") }, errors || ""),
      el("td", {}, formatTime(call.started_at)),
      columns.map((path) => el("td", { class: "num" }, m.has(path) ? formatMetric(path, m.get(path)) : "")));
  });
  const head = ["", "Evaluation run", "Evaluation", "Model", "Status", "Calls", "Errors", "Started"]
    .map((h, i) => el("th", { class: [5, 6].includes(i) ? "num" : undefined }, h))
    .concat(columns.map((path) => {
      const [scorer, ...rest] = path.split(".");
      return el("th", { class: "num metric", title: path }, scorer, rest.length ? el("br") : null,
        rest.length ? el("span", { class: "muted" }, rest.join(".")) : null);
    }));
  const paging = pager(params.page, calls.length, stats.count,
    (page) => evalHref({ ...params, page }),
    (first, last) => stats.count ? `${(first + 1).toLocaleString()}–${last.toLocaleString()} of ${stats.count.toLocaleString()} evaluation runs` : "no evaluation runs");
  show(el("h1", {}, "Evaluations"),
    el("div", { class: "filters" }, choice, compare,
      el("span", { class: "muted" }, "weave's Evaluation.evaluate runs, newest first; each score column is a number of their output; tick two or more to compare them example by example")),
    calls.length ? el("div", { class: "wide" }, el("table", { id: "evaluations" },
      el("thead", {}, el("tr", {}, head)), el("tbody", {}, rows))) :
      el("p", { class: "muted" }, "No evaluation runs in this project: weave's Evaluation.evaluate calls show here."),
    paging);
}

// -- two or more evaluation runs, example by example ------------------------------------------

const PREDICT_OP = "Evaluation.predict_and_score";
const COMPARE_MAX_EXAMPLES = 5000;
const COMPARE_MAX_REFS = 10000;
const CELL_CHARS = 160;

function short(value) {
  if (value === undefined) return "";
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > CELL_CHARS ? text.slice(0, CELL_CHARS - 1) + "…" : text;
}

// a score's leaves by dotted path: numbers and booleans (weave's scorers return either, or
// a dict of them)
function scoreLeaves(value, path, out) {
  if (typeof value === "number" || typeof value === "boolean") out.set(path, value);
  else if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) scoreLeaves(v, path ? `${path}.${k}` : k, out);
  }
  return out;
}

function formatScore(value) {
  if (value === undefined) return "";
  if (typeof value === "boolean") return value ? "✓" : "✗";
  return Number.isInteger(value) ? String(value) : value.toLocaleString(undefined, { maximumSignificantDigits: 4 });
}

// a score over a run's trials of one example: one trial's value as it is; over several,
// booleans as how many were true ("2/3") and numbers as their mean, each trial's value in
// the title. ``text`` is what rows compare, so runs differ when what they show differs.
function trialScores(trials, paths) {
  const out = new Map();
  for (const p of paths) {
    const values = trials.map((s) => s.get(p)).filter((v) => v !== undefined);
    if (!values.length) continue;
    const each = values.map(formatScore).join(", ");
    if (values.length === 1) out.set(p, { text: formatScore(values[0]), title: undefined });
    else if (values.every((v) => typeof v === "boolean")) {
      out.set(p, { text: `${values.filter(Boolean).length}/${values.length}`, title: `trials: ${each}` });
    } else {
      const numbers = values.map(Number);
      out.set(p, { text: formatScore(numbers.reduce((a, b) => a + b, 0) / numbers.length),
                   title: `mean of ${values.length} trials: ${each}` });
    }
  }
  return out;
}

// the weave refs inside a value (weave stores a value a model passed through unchanged,
// a dataset row's field, as a ref to it)
function refsIn(value, found, depth = 0) {
  if (typeof value === "string") { if (value.startsWith("weave:///")) found.add(value); }
  else if (value && typeof value === "object" && depth < 8) {
    for (const v of Object.values(value)) refsIn(v, found, depth + 1);
  }
  return found;
}

function withRefsRead(value, resolved, depth = 0) {
  if (typeof value === "string") {
    const read = resolved.get(value);
    return read === undefined || read === null ? value : read;
  }
  if (!value || typeof value !== "object" || depth >= 8) return value;
  if (Array.isArray(value)) return value.map((v) => withRefsRead(v, resolved, depth + 1));
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, withRefsRead(v, resolved, depth + 1)]));
}

function exampleKey(example) {
  return typeof example === "string" ? example : JSON.stringify(example);
}

async function comparePage(project) {
  const ids = (new URLSearchParams(location.search).get("calls") || "").split(",").filter(Boolean);
  const onlyDiffering = new URLSearchParams(location.search).get("differ") === "1";
  show(el("h1", {}, "Compare evaluation runs"), el("p", { class: "muted" }, "Loading…"));
  if (ids.length < 2) {
    show(el("h1", {}, "Compare evaluation runs"), el("p", { class: "error", id: "error" },
      "Pick two or more runs on the Evaluations page to compare them."),
      link(`${projectPath(project)}/weave/evaluations`, "Evaluations"));
    return;
  }
  const runs = await getLines("/calls/stream_query", { project_id: project, filter: { call_ids: ids },
    columns: RUN_COLUMNS });
  runs.sort((a, b) => ids.indexOf(a.id) - ids.indexOf(b.id));
  const predictOps = [`weave:///${project}/op/${PREDICT_OP}:*`, PREDICT_OP];
  // a cell shows CELL_CHARS of an answer: the server sends no more of it (whatever is cut
  // lies past those characters), the scores whole
  const children = await Promise.all(runs.map((run) => getLines("/ui/calls/stream_query", {
    project_id: project, filter: { parent_ids: [run.id], op_names: predictOps },
    limit: COMPARE_MAX_EXAMPLES, sort_by: [{ field: "started_at", direction: "asc" }],
    columns: PREDICTION_COLUMNS, previews: { "output.output": CELL_CHARS } })));
  const models = await readRefs([...new Set(runs.map((r) => (r.inputs || {}).model).filter((m) => refParts(m)))]);

  // one row per example, in the order the first run met them; an evaluation with
  // ``trials > 1`` predicts each example that many times: every trial of a run in its cell
  const examples = new Map();
  children.forEach((calls, at) => {
    for (const call of calls) {
      const key = exampleKey((call.inputs || {}).example);
      if (!examples.has(key)) examples.set(key, { example: (call.inputs || {}).example, byRun: runs.map(() => []) });
      examples.get(key).byRun[at].push(call);
    }
  });
  // examples given as refs to dataset rows, and refs inside outputs, read in one go
  const found = new Set();
  for (const entry of examples.values()) {
    refsIn(entry.example, found);
    for (const trials of entry.byRun) for (const call of trials) refsIn((call.output || {}).output, found);
  }
  const exampleVals = await readRefs([...found].slice(0, COMPARE_MAX_REFS));
  const scoresOf = (call) => (!call.exception ? scoreLeaves(((call.output || {}).scores), "", new Map()) : new Map());
  const paths = [...new Set([...examples.values()].flatMap((e) => e.byRun.flatMap((t) => t.flatMap((c) => [...scoresOf(c).keys()]))))];
  const manyTrials = [...examples.values()].some((e) => e.byRun.some((t) => t.length > 1));
  const outputOf = (call) => call.exception ? el("span", { class: "status error", title: call.exception }, "error")
    : (call.output || {}).output == null ? link(callHref(project, call.id), "no output", "muted")
    : link(callHref(project, call.id), short(withRefsRead(call.output.output, exampleVals)));
  const rows = [];
  let differing = 0;
  for (const entry of examples.values()) {
    const scores = entry.byRun.map((trials) => trialScores(trials.map(scoresOf), paths));
    const failed = entry.byRun.map((trials) => !trials.length || trials.every((c) => c.exception));
    const differs = failed.some(Boolean) !== failed.every(Boolean) ||
      paths.some((p) => new Set(scores.map((s) => (s.get(p) || {}).text)).size > 1);
    if (differs) differing += 1;
    if (onlyDiffering && !differs) continue;
    const shown = withRefsRead(entry.example, exampleVals);
    rows.push(el("tr", { class: differs ? "differs" : undefined },
      el("td", { class: "example" }, short(shown)),
      entry.byRun.map((trials) => el("td", { class: "output" }, !trials.length ? el("span", { class: "muted" }, "not run")
        : trials.length === 1 ? outputOf(trials[0])
        : trials.map((call, n) => el("div", { class: "trial" }, el("span", { class: "muted" }, `${n + 1}. `), outputOf(call))))),
      paths.map((p) => scores.map((s, at) => {
        const score = s.get(p);
        return el("td", { class: "num" + (at === 0 ? " first" : ""), title: score ? score.title : undefined },
          score ? score.text : "");
      }))));
  }
  const runLabel = (run) => run.display_name || opLabel(run.op_name);
  const head = [
    el("tr", {}, el("th", { rowspan: 2 }, "Example"),
      el("th", { colspan: runs.length }, "Output"),
      paths.map((p) => el("th", { colspan: runs.length, class: "num first" }, p))),
    el("tr", {}, runs.map((r) => el("th", {}, runLabel(r))),
      paths.map(() => runs.map((r, at) => el("th", { class: "num" + (at === 0 ? " first" : "") }, `#${at + 1}`)))),
  ];
  const toggle = el("input", { type: "checkbox", id: "f-differ", checked: onlyDiffering, onchange: () => {
    const s = new URLSearchParams(location.search);
    if (toggle.checked) s.set("differ", "1"); else s.delete("differ");
    go(location.pathname + "?" + s.toString());
  } });
  const legend = el("ol", { class: "runs", id: "runs" }, runs.map((run) => el("li", {},
    link(callHref(project, run.id), runLabel(run)), " · ",
    modelLabel((run.inputs || {}).model, models.get((run.inputs || {}).model)),
    " · ", el("span", { class: "muted" }, formatTime(run.started_at)))));
  show(el("h1", {}, "Compare evaluation runs"), legend,
    el("div", { class: "filters" }, el("label", {}, toggle, " only examples whose scores differ"),
      el("span", { id: "differing", class: "muted" },
        `${differing.toLocaleString()} of ${examples.size.toLocaleString()} examples differ`),
      manyTrials ? el("span", { id: "trials", class: "muted" },
        "several trials per example: each trial's output, true/false scores as how many trials were true, numbers as their mean") : null),
    el("div", { class: "wide" }, el("table", { id: "compare" }, el("thead", {}, head), el("tbody", {}, rows))),
    children.some((c) => c.length >= COMPARE_MAX_EXAMPLES)
      ? el("p", { class: "muted" }, `first ${COMPARE_MAX_EXAMPLES.toLocaleString()} predictions of each run`) : null);
}

// -- projects, navigation -------------------------------------------------------------------

function projectRow(p) {
  const href = `${projectPath(p.project_id)}/weave/calls`, opens = pathCarries(p.project_id);
  return el("tr", { class: opens ? "row" : undefined, onclick: () => opens && go(href) },
    el("td", {}, opens ? link(href, p.project_id) : el("span", { class: "unlinked",
      title: 'a name "." or ".." cannot be part of a link: engine calls --project lists its calls' }, p.project_id)),
    el("td", { class: "num" }, p.calls.toLocaleString()),
    el("td", { class: "muted" }, p.retention_days == null ? "until deleted"
      : `${p.retention_days.toLocaleString()} day${p.retention_days === 1 ? "" : "s"}`));
}

async function projectsPage() {
  const { projects } = await getJson("/ui/projects");
  const open = el("input", { placeholder: "entity/project", id: "open-project" });
  show(el("h1", {}, "Projects"),
    projects.length ? el("table", { id: "projects" },
      el("thead", {}, el("tr", {}, el("th", {}, "Project"), el("th", { class: "num" }, "Calls"),
        el("th", {}, "Kept"))),
      el("tbody", {}, projects.map(projectRow))) :
      el("p", { class: "muted" }, "No calls stored yet."),
    el("form", { class: "filters", onsubmit: (ev) => {
      ev.preventDefault();
      const project = open.value.trim();
      if (project.includes("/") && pathCarries(project)) go(`${projectPath(project)}/weave/calls`);
    } }, open, el("button", { type: "submit" }, "Open project")));
}

function renderNav(project, section) {
  const nav = document.getElementById("nav");
  if (!project) { nav.replaceChildren(); return; }
  const item = (name, href) => link(href, name, name.toLowerCase() === section ? "current" : undefined);
  nav.replaceChildren(el("span", { class: "project" }, project),
    ...["Calls", "Evaluations", "Objects", "Tables"].map((name) =>
      item(name, `${projectPath(project)}/weave/${name.toLowerCase()}`)));
}

// a path's part as a name; one no link of ours makes (a stray %) as it stands
function decoded(part) {
  try { return decodeURIComponent(part); } catch (err) { return part; }
}

// this page's path without the root path (the server also serves it without: a proxy
// that strips the prefix, the server's own URL)
function pagePath() {
  const path = location.pathname;
  return ROOT && (path === ROOT || path.startsWith(ROOT + "/")) ? path.slice(ROOT.length) : path;
}

function render() {
  const parts = pagePath().split("/").filter(Boolean).map(decoded);
  if (parts.length < 2) {
    renderNav(null);
    return projectsPage().catch(fail);
  }
  const project = `${parts[0]}/${parts[1]}`;
  let section = "calls", page = () => callsPage(project);
  if (parts[2] === "r" && parts[3] === "call" && parts[4]) page = () => callPage(project, parts[4]);
  else if (parts[2] === "weave" && parts[3] === "calls" && parts[4]) page = () => callPage(project, parts[4]);
  else if (parts[2] === "weave" && parts[3] === "evaluations" && parts[4] === "compare") { section = "evaluations"; page = () => comparePage(project); }
  else if (parts[2] === "weave" && parts[3] === "evaluations") { section = "evaluations"; page = () => evaluationsPage(project); }
  else if (parts[2] === "weave" && parts[3] === "objects") { section = "objects"; page = () => objectsPage(project); }
  else if (parts[2] === "weave" && parts[3] === "tables") { section = "tables"; page = () => tablesPage(project); }
  renderNav(project, section);
  document.title = `${project} · engine traces`;
  return page().catch(fail);
}

document.getElementById("keyform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  apiKey = document.getElementById("key").value;
  sessionStorage.setItem(KEY_STORE, apiKey);
  document.getElementById("keyform").hidden = true;
  render();
});
window.addEventListener("popstate", render);
render();
