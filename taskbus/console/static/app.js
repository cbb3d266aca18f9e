// The taskbus console's dashboard: hash routes over the admin API under /api.
// The admin key lives in sessionStorage and travels as a bearer header (no cookies, so no
// CSRF); every action is a POST. Data reaches the page only as text nodes or attribute values
// (never innerHTML): task payloads, errors and names are attacker-controlled.

const KEY = "taskbus.adminKey";
const STATES = ["queued", "scheduled", "throttled", "running", "dead", "finished"];
const TERMINAL = ["succeeded", "failed", "cancelled"];
const RETRYABLE = ["failed", "cancelled"];
const REFRESH_MS = 2000;
const FOLLOW_MS = 500;
const enc = encodeURIComponent;
const $ = (selector) => document.querySelector(selector);
const signedIn = () => sessionStorage.getItem(KEY) !== null;  // "" on an open console (no ADMIN_KEYS)

// --- DOM -------------------------------------------------------------------------------------

/** An element; string children become text nodes, `on*` attributes listeners. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const link = (href, text) => h("a", { href }, text);
/** A task's link; in a queue's own listing the id without its queue prefix (`~<hex>`, whole in the title). */
const taskLink = (id) => h("a", { href: `#/task/${enc(id)}`, title: id, "data-id": id }, id.slice(id.lastIndexOf("~")));
const queueLink = (name) => link(`#/queue/${enc(name)}`, name);
const pre = (value, cls = "json") => h("pre", { class: cls }, value === undefined || value === null ? "null" : JSON.stringify(value, null, 2));
/** A moment (ISO text, or epoch ms) shown in UTC. */
function time(moment) {
  if (moment === null || moment === undefined || moment === "") return "–";
  const iso = typeof moment === "number" ? new Date(moment).toISOString() : String(moment);
  return h("time", { datetime: iso, title: iso }, iso.replace("T", " ").replace(/(\.\d+)?Z$/, " UTC"));  // ms in the title
}
const errorText = (error) => (error ? `${error.type ?? "error"}: ${error.message ?? ""}` : "–");

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

/** A table from `columns` = [[header, row => cell, field?]]; `field` names the cell (data-field). */
function table(columns, rows, empty, attrs = {}) {
  const body = rows.length
    ? rows.map((row) => h("tr", {}, columns.map(([, cell, field]) => h("td", { "data-field": field }, cell(row)))))
    : [h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty))];
  return h("div", { class: "scroll" }, h("table", attrs,
    h("thead", {}, h("tr", {}, columns.map(([head]) => h("th", { scope: "col" }, head)))), h("tbody", {}, body)));
}

/** A button that runs `fn` once at a time and reports its failure. */
function action(label, fn, attrs = {}) {
  const button = h("button", { type: "button", class: "write", ...attrs }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try { await fn(); } catch (error) { showError(error); } finally { button.disabled = false; }
  });
  return button;
}

function flash(message, kind = "info") {
  const box = $("#flash");
  box.textContent = message ?? "";
  box.className = kind;
  box.hidden = !message;
}

function showError(error) {
  const status = error.details?.status ? ` (status: ${error.details.status})` : "";
  flash(`${error.message}${status}`, "error");
}

/** Run `fn` every `ms` while `el` is on the page and `fn` does not answer false; a failure
 * (Redis down: a 503) is shown until a later run succeeds, and the polling goes on. */
function poll(el, ms, fn) {
  let failed = null;
  const tick = async () => {
    if (!el.isConnected) return;
    let again = true;
    try {
      again = (await fn()) !== false;
      if (failed !== null && $("#flash").textContent === failed) flash(null);
      failed = null;
    } catch (error) {
      showError(error);
      failed = $("#flash").textContent;
    }
    if (again && el.isConnected) setTimeout(tick, ms);
  };
  setTimeout(tick, ms);
}

// --- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, error) {
    super(error.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
    this.details = error;
  }
}

/** One call to the admin API; JSON in and out; a 401 signs out. */
async function api(method, path, body) {
  const key = sessionStorage.getItem(KEY);
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`/api${path}`, init);
  } catch {
    throw new ApiError(0, { code: "network", message: "The console does not answer." });
  }
  const data = await response.json().catch(() => null);
  if (response.ok && method === "GET" && path === "/queues" && data) {
    document.body.classList.toggle("read-only", data.read_only === true);  // its actions are hidden
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data?.error ?? {});
    if (response.status === 401) signOut(`Signed out: ${error.message}`);
    throw error;
  }
  return data;
}

// --- routes ----------------------------------------------------------------------------------

const ROUTES = [
  [/^\/?$/, overviewPage],
  [/^\/queue\/([^/]+)(?:\/([a-z]+))?$/, queuePage],
  [/^\/task\/([^/]+)$/, taskPage],
  [/^\/dead\/([^/]+)$/, deadPage],
  [/^\/workers$/, workersPage],
];

/** Render the page the hash names into a fresh container (a stale render lands off-page). */
async function route() {
  if (!signedIn()) return showLogin();
  const open = sessionStorage.getItem(KEY) === "";
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#logout").hidden = open;
  $("#open-note").hidden = !open;
  const [path, query] = location.hash.slice(1).split("?");
  const view = h("div");
  $("#view").replaceChildren(view);
  for (const [pattern, page] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    try {
      await page(view, new URLSearchParams(query ?? ""), ...match.slice(1).map((part) => part && decodeURIComponent(part)));
    } catch (error) {
      showError(error);
    }
    return;
  }
  view.append(h("h1", {}, "Not found"), link("#/", "Back to the overview"));
}

function showLogin() {
  $("#nav").hidden = true;
  $("#view").replaceChildren();
  $("#login").hidden = false;
  $("#login input[name=key]").focus();
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  flash(message, message ? "error" : "info");
  showLogin();
}

// --- pages -----------------------------------------------------------------------------------

const QUEUE_COLUMNS = [
  ["Queue", (o) => queueLink(o.queue), "queue"],
  ["Queued", (o) => o.counts.queued, "queued"],
  ["Scheduled", (o) => o.counts.scheduled, "scheduled"],
  ["Throttled", (o) => o.counts.throttled ?? 0, "throttled"],
  ["Running", (o) => o.counts.running, "running"],
  ["Dead", (o) => link(`#/dead/${enc(o.queue)}`, o.counts.dead), "dead"],
  ["Evicted", (o) => (o.dead_letters ? h("span", { title: `dead letters kept: at most ${o.dead_letters.cap}, ${
    o.dead_letters.ttl_s} s` }, o.dead_letters.evicted) : "–"), "evicted"],
  ["Oldest queued", (o) => age(o.oldest_age_s.queued), "oldest_queued"],
  ["Oldest running", (o) => age(o.oldest_age_s.running), "oldest_running"],
  ["Paused", (o) => (o.paused ? `paused by ${o.paused_by ?? "?"}` : "no"), "paused"],
  ["Succeeded 1 h", (o) => o.last_hour.succeeded, "succeeded"],
  ["Failed 1 h", (o) => o.last_hour.failed, "failed"],
  ["Cancelled 1 h", (o) => o.last_hour.cancelled, "cancelled"],
  ["Workers", (o) => o.workers, "workers"],
];

function pauseButton(overview, after) {
  const verb = overview.paused ? "resume" : "pause";
  return action(overview.paused ? "Resume" : "Pause", async () => {
    await api("POST", `/queues/${enc(overview.queue)}:${verb}`);
    flash(`${overview.queue}: ${verb === "pause" ? "paused" : "resumed"}`);
    await after();
  }, { "data-action": verb });
}

async function overviewPage(view) {
  const tableBox = h("div");
  const chartBox = h("div", { class: "chart", id: "chart" });
  view.append(h("h1", {}, "Queues"), tableBox,
    h("h2", {}, "Succeeded and failed per second, last 15 minutes (all queues)"), chartBox);
  let chart = null;
  const refresh = async () => {
    const { queues } = await api("GET", "/queues");
    const columns = [...QUEUE_COLUMNS, ["", (o) => pauseButton(o, refresh), "actions"]];
    tableBox.replaceChildren(table(columns, queues, "No queues yet.", { id: "queues" }));
    for (const [index, row] of tableBox.querySelectorAll("tbody tr").entries()) {
      if (queues[index]) row.dataset.queue = queues[index].queue;
    }
    const data = rates(queues);
    if (chart) chart.setData(data);
    else if (window.uPlot) chart = lineChart(chartBox, data);
  };
  await refresh();
  poll(view, REFRESH_MS, refresh);
}

/** [times, succeeded/s, failed/s] from every queue's 10 s buckets, summed by bucket. */
function rates(queues) {
  const totals = new Map();
  for (const overview of queues) {
    for (const bucket of overview.per_10s ?? []) {
      const total = totals.get(bucket.at) ?? { succeeded: 0, failed: 0 };
      total.succeeded += bucket.succeeded;
      total.failed += bucket.failed;
      totals.set(bucket.at, total);
    }
  }
  const ats = [...totals.keys()].sort().slice(-90);
  return [ats.map((at) => Date.parse(at) / 1000), ats.map((at) => totals.get(at).succeeded / 10),
    ats.map((at) => totals.get(at).failed / 10)];
}

function lineChart(box, data) {
  const options = {
    width: Math.max(box.clientWidth, 320), height: 240,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    axes: [{}, { label: "tasks/s" }],
    series: [{}, { label: "succeeded/s", stroke: "#2e7d32", width: 2 }, { label: "failed/s", stroke: "#c62828", width: 2 }],
  };
  return new window.uPlot(options, data, box);
}

const COMMON_COLUMNS = [
  ["Task", (t) => taskLink(t.id), "id"],
  ["Type", (t) => t.type ?? "–", "type"],
  ["Status", (t) => t.status ?? "expired", "status"],
  ["Attempts", (t) => (t.max_attempts ? `${t.attempts}/${t.max_attempts}` : "–"), "attempts"],
  ["Created", (t) => time(t.created_at), "created_at"],
];
const STATE_COLUMNS = {
  queued: [],
  scheduled: [["Due", (t) => time(t.due_at), "due_at"]],
  throttled: [["Limit key", (t) => t.limit_key ?? "", "limit_key"]],
  running: [["Worker", (t) => t.worker ?? "–", "worker"], ["Idle", (t) => age(t.idle_s), "idle_s"]],
  dead: [["Dead since", (t) => time(t.dead_at), "dead_at"], ["Error", (t) => errorText(t.error), "error"]],
  finished: [["Finished", (t) => time(t.finished_at), "finished_at"], ["Error", (t) => errorText(t.error), "error"]],
};

async function queuePage(view, params, name, state = "queued") {
  if (!STATES.includes(state)) state = "queued";
  const cursor = params.get("cursor");
  const query = new URLSearchParams({ state, limit: "50", ...(cursor ? { cursor } : {}) });
  const [overview, page] = await Promise.all([
    api("GET", `/queues/${enc(name)}`), api("GET", `/queues/${enc(name)}/tasks?${query}`)]);
  const base = `#/queue/${enc(name)}`;
  view.append(
    h("h1", {}, "Queue ", h("code", {}, name)),
    h("p", { class: "actions" }, overview.paused ? `Paused by ${overview.paused_by ?? "?"}. ` : null,
      pauseButton(overview, route), " ", link(`#/dead/${enc(name)}`, "Dead letters and re-drive")),
    h("nav", { class: "tabs" }, STATES.map((s) => h("a", {
      href: `${base}/${s}`, class: s === state ? "active" : null, "aria-current": s === state ? "page" : null,
    }, s in overview.counts ? `${s} (${overview.counts[s]})` : s))),
    table([...COMMON_COLUMNS, ...STATE_COLUMNS[state]], page.tasks, `No ${state} tasks.`, { id: "tasks" }),
    h("p", { class: "paging" }, cursor ? link(`${base}/${state}`, "First page") : null, " ",
      page.next_cursor ? link(`${base}/${state}?cursor=${enc(page.next_cursor)}`, "Next") : null),
  );
}

const HISTORY_COLUMNS = [
  ["Attempt", (a) => a.attempt], ["Worker", (a) => a.worker ?? "–"], ["Started", (a) => time(a.started_at)],
  ["Finished", (a) => time(a.finished_at)], ["Outcome", (a) => a.outcome, "outcome"],
  ["Error", (a) => (a.error ? [errorText(a.error), a.error.traceback
    ? h("details", {}, h("summary", {}, "traceback"), h("pre", { class: "traceback" }, a.error.traceback)) : null] : "–")],
];
const AUDIT_COLUMNS = [
  ["At", (e) => time(e.at)], ["Who", (e) => e.actor], ["Action", (e) => e.action, "action"],
  ["Detail", (e) => (e.detail === null || e.detail === undefined || e.detail === "" ? "–"
    : typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail))],
];

async function taskPage(view, _params, id) {
  const task = await api("GET", `/tasks/${enc(id)}`);
  const path = `/tasks/${enc(task.id)}`;
  const terminal = TERMINAL.includes(task.status);
  const cancel = action("Cancel", async () => {
    const { outcome } = await api("POST", `${path}:cancel`);
    flash(outcome === "cancelling" ? "Cancelling: the handler is told, the task ends cancelled when it stops." : "Cancelled.");
    await route();
  }, { id: "cancel", disabled: terminal });
  const retry = action("Retry", async () => {
    await api("POST", `${path}:retry`);
    flash("Queued again: a new attempt series under the same id.");
    await route();
  }, { id: "retry", disabled: !RETRYABLE.includes(task.status) });
  const facts = [["Queue", queueLink(task.queue)], ["Type", task.type], ["Attempts", `${task.attempts} of ${task.max_attempts}`],
    ["Created", time(task.created_at)], ["Started", time(task.started_at)], ["Finished", time(task.finished_at)],
    ["Cancel requested", time(task.cancel_requested_at)],
    ["Dead letter", task.dead_letter ? time(task.dead_letter.at) : "no"]];
  view.append(
    h("h1", {}, "Task ", h("code", {}, task.id)),
    h("p", { class: "actions" }, h("span", { id: "task-status", class: `status ${task.status}` }, task.status), " ", cancel, " ", retry),
    h("dl", { class: "facts" }, facts.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)])),
    h("h2", {}, "Payload"), pre(task.payload),
    h("h2", {}, "Result"), pre(task.result),
    h("h2", {}, "Error"),
    task.error ? h("div", { class: "error", id: "task-error" }, h("p", {}, errorText(task.error)),
      task.error.traceback ? h("pre", { class: "traceback" }, task.error.traceback) : null) : h("p", {}, "None."),
    h("h2", {}, "Attempts"), table(HISTORY_COLUMNS, task.history ?? [], "No attempt yet.", { id: "history" }),
    h("h2", {}, "Audit trail"), table(AUDIT_COLUMNS, task.audit ?? [], "No operator action yet.", { id: "audit" }),
  );
  if (task.cancel_requested_at && !terminal) poll(view, FOLLOW_MS, () => route().then(() => false));  // until it ends
}

async function deadPage(view, _params, name) {
  const field = (label, input) => h("label", {}, label, " ", input);
  const form = h("form", { id: "redrive-form", class: "filters" },
    field("Error type", h("input", { name: "error_type", placeholder: "e.g. PermanentError" })),
    field("Task type", h("input", { name: "type" })),
    field("Dead since", h("input", { name: "since", type: "datetime-local", step: "1", title: "your browser's local time" })),
    field("until", h("input", { name: "until", type: "datetime-local", step: "1", title: "your browser's local time" })),
    field("Rate (tasks/s)", h("input", { name: "rate", type: "number", min: "0.1", step: "any", placeholder: "default" })));
  const count = h("output", { id: "dry-run-count" });
  const jobs = h("div", { id: "redrives" });
  form.append(action("Count (dry run)", async () => {
    const { matched } = await api("POST", `/queues/${enc(name)}/redrives`, { ...filters(form, false), dry_run: true });
    count.textContent = `${matched} dead letter${matched === 1 ? "" : "s"} match.`;
  }, { id: "dry-run" }), " ", h("button", { type: "submit", id: "redrive", class: "write" }, "Re-drive"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const job = await api("POST", `/queues/${enc(name)}/redrives`, filters(form, true));
      flash(`Re-drive ${job.id} started.`);
      jobs.prepend(redriveCard(job));
    } catch (error) {
      showError(error);
    }
  });
  const [{ redrives }, dead] = await Promise.all([
    api("GET", `/queues/${enc(name)}/redrives`), api("GET", `/queues/${enc(name)}/tasks?state=dead&limit=10`)]);
  jobs.append(...redrives.map(redriveCard));
  view.append(h("h1", {}, "Dead letters of ", queueLink(name)), form, h("p", {}, count),
    h("h2", {}, "Re-drives"), jobs,
    h("h2", {}, "Newest dead letters"),
    table([...COMMON_COLUMNS, ...STATE_COLUMNS.dead], dead.tasks, "No dead letters.", { id: "tasks" }),
    dead.next_cursor ? link(`#/queue/${enc(name)}/dead?cursor=${enc(dead.next_cursor)}`, "More") : null);
}

/** The re-drive request body from the filter form (datetime-local is the browser's local time). */
function filters(form, withRate) {
  const values = new FormData(form);
  const body = {};
  for (const name of ["error_type", "type"]) if (values.get(name).trim()) body[name] = values.get(name).trim();
  for (const name of ["since", "until"]) if (values.get(name)) body[name] = new Date(values.get(name)).toISOString();
  if (withRate && values.get("rate")) body.rate = Number(values.get("rate"));
  return body;
}

/** A re-drive with its progress bar, following GET /api/redrives/<id> while it runs. */
function redriveCard(job) {
  const bar = h("progress", { max: "1", value: "0" });
  const text = h("span", { class: "progress-text" });
  const state = h("strong", { class: "state" });
  const cancel = action("Cancel re-drive", async () => update(await api("POST", `/redrives/${enc(job.id)}:cancel`)),
    { "data-action": "cancel-redrive" });
  const f = job.filters ?? {};
  const described = Object.entries(f).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => `${k}=${v}`);
  const card = h("section", { class: "redrive", "data-redrive": job.id },
    h("p", {}, state, " ", h("code", {}, job.id), ` by ${job.created_by ?? "?"} at `, time(job.created_at),
      `, ${job.rate}/s, `, described.length ? described.join(", ") : "every dead letter"),
    h("p", {}, bar, " ", text, " ", cancel));
  const update = (current) => {
    const done = current.total ? Math.min(100, Math.floor((100 * current.moved) / current.total)) : current.state === "done" ? 100 : 0;
    bar.max = Math.max(current.total, 1);
    bar.value = current.total ? current.moved : done / 100;
    bar.dataset.percent = String(done);
    text.textContent = `${current.moved} of ${current.total} moved (${done}%)`;
    state.textContent = current.state;
    card.dataset.state = current.state;
    cancel.hidden = current.state !== "running";
  };
  update(job);
  if (job.state === "running") {
    poll(card, FOLLOW_MS, async () => {
      const current = await api("GET", `/redrives/${enc(job.id)}`);
      update(current);
      return current.state === "running";
    });
  }
  return card;
}

const WORKER_COLUMNS = [
  ["Consumer", (w) => w.consumer, "consumer"], ["Host", (w) => w.host], ["PID", (w) => w.pid],
  ["Queues", (w) => (w.queues ?? []).join(", "), "queues"], ["Handler types", (w) => (w.types ?? []).join(", ")],
  ["Concurrency", (w) => w.concurrency], ["In flight", (w) => w.in_flight, "in_flight"],
  ["Last heartbeat", (w) => time(w.seen_at)], ["Started", (w) => time(w.started_at)], ["Version", (w) => w.version ?? "–"],
];

async function workersPage(view) {
  const box = h("div");
  view.append(h("h1", {}, "Workers"), box);
  const refresh = async () => {
    const { workers } = await api("GET", "/workers");
    box.replaceChildren(table(WORKER_COLUMNS, workers, "No live worker.", { id: "workers" }));
  };
  await refresh();
  poll(view, REFRESH_MS, refresh);
}

// --- start -----------------------------------------------------------------------------------

$("#login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = new FormData(event.target).get("key").trim();
  sessionStorage.setItem(KEY, key);
  try {
    await api("GET", "/queues");  // the key is checked before it is kept
  } catch (error) {
    sessionStorage.removeItem(KEY);
    showError(error);
    return;
  }
  event.target.reset();
  flash(null);
  await route();
});
$("#logout").addEventListener("click", () => signOut(null));
$("#search").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = new FormData(event.target).get("id").trim();
  if (id) location.hash = `#/task/${enc(id)}`;
});
window.addEventListener("hashchange", () => { flash(null); route(); });

/** A console without ADMIN_KEYS (read-only) answers without a key: then there is nothing to type. */
async function start() {
  if (!signedIn()) {
    const probe = await fetch("/api/queues", { cache: "no-store", credentials: "omit" }).catch(() => null);
    if (probe?.ok) sessionStorage.setItem(KEY, "");
  }
  await route();
}
start();
