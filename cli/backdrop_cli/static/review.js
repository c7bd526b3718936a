// The review page: jobs from /api/jobs, decisions to /api/decisions (the token in a header).
// Every text that comes from a job (keys, reasons, notes, check names) is set with textContent,
// never as markup: uploaders choose object keys.
"use strict";

const token = new URLSearchParams(window.location.search).get("token") || "";
const state = { jobs: [], index: 0, busy: false };
const $ = (id) => document.getElementById(id);

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

async function api(path, options = {}) {
  const headers = { "X-Backdrop-Token": token, ...(options.headers || {}) };
  let answer;
  try {
    answer = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (error) {
    return { status: 0, body: { error: `the review server does not answer (${error.message}): is it still running?` } };
  }
  let body = {};
  try { body = await answer.json(); } catch (_) { /* a 403 is plain text */ }
  return { status: answer.status, body };
}

function waited(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

function number(value) {
  return typeof value === "number" && !Number.isInteger(value) ? value.toPrecision(3) : String(value);
}

async function load(message) {
  const { status, body } = await api("/api/jobs");
  if (status !== 200) {
    $("summary").textContent = `Cannot read the jobs: ${body.error || `HTTP ${status}`}`;
    return;
  }
  state.jobs = body.jobs;
  state.index = Math.min(state.index, Math.max(0, state.jobs.length - 1));
  const count = state.jobs.length;
  $("summary").textContent =
    `Stack ${body.stack} · deciding as ${body.reviewer} · ${count} job${count === 1 ? "" : "s"} waiting` +
    ` · image links valid ${Math.round(body.url_seconds / 60)} min`;
  if (message) $("message").textContent = message;
  render();
}

function render() {
  const queue = $("queue");
  queue.replaceChildren();
  state.jobs.forEach((job, i) => {
    const button = element("button", null, { type: "button", "data-job": job.job_id });
    button.append(element("span", job.source.key), element("small", `${waited(job.waiting_s)} · ${job.reasons.join("; ")}`));
    if (i === state.index) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => { state.index = i; render(); });
    const item = element("li");
    item.append(button);
    queue.append(item);
  });
  const job = state.jobs[state.index];
  $("job").hidden = !job;
  $("empty").hidden = Boolean(job);
  if (job) show(job);
}

function show(job) {
  $("job").dataset.job = job.job_id;
  $("job-key").textContent = job.source.key;
  $("job-meta").textContent =
    `job ${job.job_id} · colour ${job.color} · attempt ${job.attempt} · waiting ${waited(job.waiting_s)}`;
  $("original").src = job.images.original;
  if (job.images.result) $("result").src = job.images.result; else $("result").removeAttribute("src");
  $("reasons").replaceChildren(...job.reasons.map((reason) => element("li", reason)));
  const rows = Object.entries(job.checks).map(([name, value]) => {
    const row = element("tr");
    row.append(element("td", name), element("td", number(value)));
    return row;
  });
  $("checks").tBodies[0].replaceChildren(...rows);
  const renditions = Object.entries(job.renditions).map(([name, r]) => {
    const item = element("li");
    if (r.url) item.append(element("img", null, { src: r.url, alt: `rendition ${name}` }));
    item.append(element("span", `${name}: ${r.width}x${r.height} ${r.format || ""} · ${r.verdict}`));
    return item;
  });
  $("renditions").replaceChildren(...(renditions.length ? renditions : [element("li", "none")]));
}

async function decide(decision, note) {
  const job = state.jobs[state.index];
  if (!job || state.busy) return;
  state.busy = true;
  $("message").textContent = `${decision === "approve" ? "Approving" : "Rejecting"} ${job.source.key}…`;
  const { status, body } = await api("/api/decisions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ job_id: job.job_id, decision, note: note || null }),
  });
  state.busy = false;
  const outcome = (body.decided || [])[0];
  const problem = [...(body.refused || []), ...(body.not_sent || [])][0];
  let message;
  if (outcome) message = `${job.source.key}: ${outcome.status}${outcome.error_message ? ` (${outcome.error_message})` : ""}`;
  else if (problem) message = `${job.source.key}: not decided: ${problem.reason}`;
  else if (body.still_waiting && body.still_waiting.length) message = `${job.source.key}: sent, still waiting; reload later`;
  else message = `${job.source.key}: ${body.error || `HTTP ${status}`}`;
  await load(message);
}

function askReject() {
  if (!state.jobs[state.index] || state.busy) return;
  $("note").value = "";
  $("reject-dialog").showModal();
  $("note").focus();
}

function move(step) {
  if (!state.jobs.length) return;
  state.index = (state.index + step + state.jobs.length) % state.jobs.length;
  render();
}

document.addEventListener("DOMContentLoaded", () => {
  $("approve").addEventListener("click", () => decide("approve"));
  $("reject").addEventListener("click", askReject);
  $("reject-cancel").addEventListener("click", () => $("reject-dialog").close());
  $("reject-form").addEventListener("submit", (event) => {
    const note = $("note").value.trim();
    if (!note) { event.preventDefault(); return; }
    $("reject-dialog").close();
    decide("reject", note);
  });
  document.addEventListener("keydown", (event) => {
    if ($("reject-dialog").open || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target instanceof HTMLTextAreaElement || event.target instanceof HTMLInputElement) return;
    const actions = { a: () => decide("approve"), r: askReject, j: () => move(1), k: () => move(-1) };
    const action = actions[event.key];
    if (action) { event.preventDefault(); action(); }
  });
  load();
});
