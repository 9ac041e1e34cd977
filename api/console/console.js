// Conveyor's web console: plain JavaScript, no dependency, nothing loaded from outside this api.
//
// Every status and progress bar on the page moves from one event stream (GET /events, Server-Sent Events, opened
// with a single-use ticket from POST /ws-tickets). When the stream drops (an api restart, a network blip) the page
// shows "reconnecting", takes a new ticket and resumes after the last event id it saw, so no step is missed; after
// a "resync" (the resume point is older than the stream keeps) it reads the jobs again over HTTP.
"use strict";

const KEY_STORAGE = "conveyor.key";
const PAGE_SIZE = 50;
const ACTIVE = new Set(["queued", "started", "retrying"]);
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const TEMPLATES = {
  log: { channel: "log", message: "hello from the console" },
  webhook: { channel: "webhook", url: "http://127.0.0.1:1080/hooks", data: { event: "console.test" } },
  email: { channel: "email", to: ["someone@example.com"], subject: "Hello", text: "Sent from the console" },
  websocket: { channel: "websocket", topic: "console", message: { text: "hello" } },
  http: { channel: "http", method: "GET", url: "http://127.0.0.1:1080/menu" },
};

const state = {
  key: null,
  jobs: new Map(), // job_id -> job (as GET /jobs/{id} shows it, kept current by events)
  timelines: new Map(), // job_id -> [event types seen, in order]
  order: [], // job ids shown, newest first
  nextCursor: null,
  filters: { status: "", kind: "" },
  lastEventId: null,
  source: null,
  retryDelay: 500,
  reconnectTimer: null,
  pending: null, // events received before the first list was read
  upload: null, // { jobId } of the upload whose processing bar is shown
  detail: null, // job id shown in the detail panel
  topics: [], // topics subscribed to, on a stream of their own
  topicSource: null,
  topicLastEventId: null,
  topicTimer: null,
  seconds: [], // the last CHART_SECONDS seconds: { at, succeeded, failed, cancelled, active }
};
const CHART_SECONDS = 60;
const CHART_COLOURS = { succeeded: "#1a7f37", failed: "#cf222e", cancelled: "#8c959f", active: "#fb8500" };

const $ = (selector) => document.querySelector(selector);

function setConnection(text, mode) {
  const badge = $("#connection");
  badge.textContent = text;
  badge.dataset.state = mode;
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  let body = null;
  const text = await response.text();
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = { detail: text };
    }
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    const error = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    error.status = response.status;
    throw error;
  }
  return body;
}

// --- sign-in -----------------------------------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  await api("/jobs?limit=1");
  sessionStorage.setItem(KEY_STORAGE, key);
  $("#sign-in").hidden = true;
  $("#app").hidden = false;
  $("#nav").hidden = false;
  connect();
  drawChart();
  setInterval(drawChart, 1000);
}

function signOut() {
  sessionStorage.removeItem(KEY_STORAGE);
  if (state.source) state.source.close();
  clearTimeout(state.reconnectTimer);
  location.reload();
}

// --- the event stream --------------------------------------------------------------------------------------------

// A stream message's JSON, or null for one that is not JSON (skipped: the stream goes on).
function eventData(message) {
  try {
    return JSON.parse(message.data);
  } catch {
    return null;
  }
}

async function connect() {
  clearTimeout(state.reconnectTimer);
  let ticket;
  try {
    ticket = (await api("/ws-tickets", { method: "POST" })).ticket;
  } catch (error) {
    if (error.status === 401) return signOut();
    return scheduleReconnect();
  }
  const params = new URLSearchParams({ ticket });
  if (state.lastEventId) params.set("last_event_id", state.lastEventId);
  const source = new EventSource(`/events?${params}`);
  state.source = source;
  source.onopen = () => {
    state.retryDelay = 500;
    setConnection("live", "live");
    if (state.lastEventId === null) {
      // No resume point yet: read the jobs now that the stream holds every later change (applied after the list).
      state.pending = [];
      loadJobs(true);
    }
  };
  source.onmessage = (message) => {
    const data = eventData(message);
    if (data === null) return;
    if (message.lastEventId) state.lastEventId = message.lastEventId;
    if (data.type === "resync") {
      loadJobs(true);
      return;
    }
    if (!data.type || !data.type.startsWith("job.")) return;
    if (state.pending !== null) state.pending.push(data);
    else applyEvent(data);
  };
  source.onerror = () => {
    // EventSource would reconnect by itself with the same (spent) ticket: take a new one instead.
    source.close();
    if (state.source === source) scheduleReconnect();
  };
}

function scheduleReconnect() {
  setConnection("reconnecting…", "reconnecting");
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = setTimeout(connect, state.retryDelay);
  state.retryDelay = Math.min(state.retryDelay * 2, 5000);
}

function applyEvent(event) {
  const id = event.job_id;
  const outcome = event.type.slice(4);
  if (FINISHED.has(outcome)) {
    currentSecond()[outcome] += 1;
    setTimeout(drawChart, 0); // after the row's state below has changed
  }
  const timeline = state.timelines.get(id) || [];
  timeline.push(event.type);
  state.timelines.set(id, timeline);
  let job = state.jobs.get(id);
  if (!job) {
    if (event.type !== "job.queued") {
      fetchJob(id);
      return;
    }
    job = { job_id: id, kind: event.kind, status: "queued", progress: 0, created_at: new Date(event.ts * 1000).toISOString() };
    state.jobs.set(id, job);
    if (matches(job)) state.order.unshift(id);
  }
  if (event.status) job.status = event.status;
  if (event.progress !== null && event.progress !== undefined) job.progress = event.progress;
  if (event.type === "job.succeeded") job.progress = 100;
  if (event.error) job.error = event.error;
  if (event.type === "job.queued") {
    job.error = null;
  }
  render(id);
  if (state.upload && state.upload.jobId === id) showIngest(job);
  if (state.detail === id) showDetail(id, false);
}

async function fetchJob(id) {
  try {
    const job = await api(`/jobs/${encodeURIComponent(id)}`);
    const known = state.jobs.has(id);
    state.jobs.set(id, job);
    if (!known) state.timelines.set(id, state.timelines.get(id) || []);
    render(id);
  } catch {
    // not this owner's, or gone: nothing to show
  }
}

// --- the jobs table ----------------------------------------------------------------------------------------------

function matches(job) {
  return (!state.filters.status || job.status === state.filters.status) && (!state.filters.kind || job.kind === state.filters.kind);
}

async function loadJobs(reset) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (state.filters.status) params.set("status", state.filters.status);
  if (state.filters.kind) params.set("kind", state.filters.kind);
  if (!reset && state.nextCursor) params.set("cursor", state.nextCursor);
  let page;
  try {
    page = await api(`/jobs?${params}`);
  } catch {
    if (state.pending !== null) flushPending();
    return;
  }
  if (reset) state.order = [];
  for (const job of page.jobs) {
    state.jobs.set(job.job_id, job);
    if (!state.order.includes(job.job_id)) state.order.push(job.job_id);
  }
  state.nextCursor = page.next_cursor;
  renderAll();
  flushPending();
}

function flushPending() {
  const pending = state.pending || [];
  state.pending = null;
  for (const event of pending) applyEvent(event);
}

function renderAll() {
  const body = $("#jobs tbody");
  body.replaceChildren(...state.order.map((id) => row(state.jobs.get(id))));
  $("#jobs-empty").hidden = state.order.length > 0;
  $("#more").hidden = !state.nextCursor;
}

function render(id) {
  const job = state.jobs.get(id);
  const existing = document.getElementById(`job-${id}`);
  const shown = matches(job);
  if (existing) {
    // kept even when it no longer matches the filters (until they are read again): a button's outcome stays visible
    existing.replaceWith(row(job));
  } else if (shown) {
    // now matching the filters (a job that just failed, in the failed view): shown in its place, newest first
    if (!state.order.includes(id)) {
      state.order.push(id);
      state.order.sort((a, b) => (created(b) > created(a) ? 1 : -1));
    }
    renderAll();
  }
  $("#jobs-empty").hidden = state.order.length > 0;
}

function created(id) {
  return Date.parse(state.jobs.get(id).created_at || "") || 0;
}

function row(job) {
  const tr = document.createElement("tr");
  tr.id = `job-${job.job_id}`;
  tr.dataset.jobId = job.job_id;
  tr.dataset.status = job.status;
  tr.dataset.timeline = (state.timelines.get(job.job_id) || []).join(" ");
  const idCell = document.createElement("td");
  const link = document.createElement("button");
  link.type = "button";
  link.className = "link";
  link.textContent = job.job_id;
  link.title = "Show this job";
  link.addEventListener("click", () => showDetail(job.job_id, true));
  idCell.append(link);
  const kind = cell(job.kind || "");
  const status = cell(job.status);
  status.className = `status status-${job.status}`;
  if (job.error && job.status !== "succeeded") {
    const reason = document.createElement("div");
    reason.className = "reason";
    reason.textContent = job.error;
    status.append(reason);
  }
  const progressCell = document.createElement("td");
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = Math.round(job.progress || 0);
  bar.setAttribute("aria-label", `progress of ${job.job_id}`);
  progressCell.append(bar);
  const created = cell(job.created_at ? new Date(job.created_at).toLocaleTimeString() : "");
  const actions = document.createElement("td");
  if (job.status === "failed") actions.append(actionButton("Retry", () => retry(job.job_id)));
  if (ACTIVE.has(job.status)) actions.append(actionButton("Cancel", () => cancel(job.job_id)));
  tr.append(idCell, kind, status, progressCell, created, actions);
  return tr;
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function actionButton(label, handler) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.className = `action action-${label.toLowerCase()}`;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await handler();
    } catch (error) {
      button.disabled = false;
      button.title = error.message;
    }
  });
  return button;
}

async function retry(id) {
  const seen = (state.timelines.get(id) || []).length;
  const job = await api(`/jobs/${encodeURIComponent(id)}/retry`, { method: "POST" });
  // The stream may have carried this retry before its answer came (queued, even its new outcome): it is ahead.
  if ((state.timelines.get(id) || []).slice(seen).includes("job.queued")) {
    render(id);
    return;
  }
  mergeJob(job);
}

async function cancel(id) {
  const job = await api(`/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
  mergeJob(job);
}

function mergeJob(job) {
  const known = state.jobs.get(job.job_id);
  // The event stream may already have moved the job on; an answer never moves it back.
  if (!known || !FINISHED.has(known.status) || job.status === "queued" || FINISHED.has(job.status)) {
    state.jobs.set(job.job_id, { ...known, ...job });
  }
  render(job.job_id);
}

function setFilter(status, kind) {
  state.filters = { status, kind };
  $("#status-filter").value = status;
  $("#kind-filter").value = kind;
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.status === status && !kind));
  }
  state.nextCursor = null;
  loadJobs(true);
}

// --- submitting and uploading ------------------------------------------------------------------------------------

function fillTemplate() {
  $("#body").value = JSON.stringify(TEMPLATES[$("#channel").value], null, 2);
}

async function submitNotification(event) {
  event.preventDefault();
  const result = $("#submit-result");
  let body;
  try {
    body = JSON.parse($("#body").value);
  } catch {
    result.textContent = "The body is not valid JSON.";
    result.className = "result error";
    return;
  }
  try {
    const accepted = await api("/notifications", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    result.textContent = `Queued ${accepted.job_id}`;
    result.className = "result";
    result.dataset.jobId = accepted.job_id;
    if (!state.jobs.has(accepted.job_id)) fetchJob(accepted.job_id);
  } catch (error) {
    result.textContent = `Refused: ${error.message}`;
    result.className = "result error";
  }
}

function setBar(name, percent) {
  const value = Math.max(0, Math.min(100, Math.round(percent)));
  $(`#upload-${name}`).value = value;
  $(`#upload-${name}-text`).textContent = `${value} %`;
}

function showIngest(job) {
  setBar("ingest", job.status === "succeeded" ? 100 : job.progress || 0);
  if (FINISHED.has(job.status)) {
    $("#upload-result").textContent = `Upload ${job.status}`;
    $("#upload-result").className = job.status === "succeeded" ? "result" : "result error";
  }
}

function upload(event) {
  event.preventDefault();
  const file = $("#file").files[0];
  if (!file) return;
  setBar("sending", 0);
  setBar("ingest", 0);
  state.upload = null;
  const result = $("#upload-result");
  result.textContent = "Sending…";
  result.className = "result";
  const form = new FormData();
  form.append("file", file, file.name);
  const request = new XMLHttpRequest();
  request.open("POST", "/uploads");
  request.setRequestHeader("Authorization", `Bearer ${state.key}`);
  request.upload.onprogress = (progress) => {
    if (progress.lengthComputable) setBar("sending", (100 * progress.loaded) / progress.total);
  };
  request.onload = () => {
    let body = {};
    try {
      body = JSON.parse(request.responseText);
    } catch {
      // not JSON: the status says enough
    }
    if (request.status !== 202) {
      result.textContent = `Refused: ${body.detail || request.status}`;
      result.className = "result error";
      return;
    }
    setBar("sending", 100);
    result.textContent = `Processing ${body.job_id}`;
    result.dataset.jobId = body.job_id;
    state.upload = { jobId: body.job_id };
    const job = state.jobs.get(body.job_id);
    if (job) showIngest(job);
    else fetchJob(body.job_id).then(() => state.jobs.has(body.job_id) && showIngest(state.jobs.get(body.job_id)));
  };
  request.onerror = () => {
    result.textContent = "The upload failed: the api could not be reached.";
    result.className = "result error";
  };
  request.send(form);
}

// --- the chart: jobs finished per second by outcome, and the jobs not finished, from the events the page sees -----

function currentSecond() {
  const now = Math.floor(Date.now() / 1000);
  let last = state.seconds[state.seconds.length - 1];
  while (!last || last.at < now) {
    last = { at: last ? last.at + 1 : now, succeeded: 0, failed: 0, cancelled: 0, active: activeCount() };
    state.seconds.push(last);
  }
  state.seconds = state.seconds.slice(-CHART_SECONDS);
  return last;
}

function activeCount() {
  let count = 0;
  for (const job of state.jobs.values()) if (ACTIVE.has(job.status)) count += 1;
  return count;
}

function drawChart() {
  const second = currentSecond();
  second.active = activeCount();
  $("#active-count").textContent = String(second.active);
  for (const outcome of FINISHED) {
    $("#chart").dataset[outcome] = String(state.seconds.reduce((sum, s) => sum + s[outcome], 0));
  }
  const canvas = $("#chart");
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const top = Math.max(1, ...state.seconds.map((s) => Math.max(s.succeeded + s.failed + s.cancelled, s.active)));
  const slot = width / CHART_SECONDS;
  const scale = (height - 12) / top;
  const offset = CHART_SECONDS - state.seconds.length;
  state.seconds.forEach((s, index) => {
    let y = height;
    for (const outcome of ["succeeded", "failed", "cancelled"]) {
      const h = s[outcome] * scale;
      context.fillStyle = CHART_COLOURS[outcome];
      context.fillRect((offset + index) * slot + 1, y - h, slot - 2, h);
      y -= h;
    }
  });
  context.strokeStyle = CHART_COLOURS.active;
  context.lineWidth = 2;
  context.beginPath();
  state.seconds.forEach((s, index) => {
    const x = (offset + index + 0.5) * slot;
    const y = height - s.active * scale;
    if (index === 0) context.moveTo(x, y);
    else context.lineTo(x, y);
  });
  context.stroke();
  context.fillStyle = "#57606a";
  context.font = "11px system-ui, sans-serif";
  context.fillText(`${top}`, 2, 10);
}

// --- topics ------------------------------------------------------------------------------------------------------

async function connectTopics() {
  clearTimeout(state.topicTimer);
  if (state.topicSource) state.topicSource.close();
  state.topicSource = null;
  if (state.topics.length === 0) return;
  let ticket;
  try {
    ticket = (await api("/ws-tickets", { method: "POST" })).ticket;
  } catch {
    state.topicTimer = setTimeout(connectTopics, 1000);
    return;
  }
  const params = new URLSearchParams({ ticket });
  for (const topic of state.topics) params.append("topic", topic);
  if (state.topicLastEventId) params.set("last_event_id", state.topicLastEventId);
  const source = new EventSource(`/events?${params}`);
  state.topicSource = source;
  source.onmessage = (message) => {
    const data = eventData(message);
    if (data === null) return;
    if (message.lastEventId) state.topicLastEventId = message.lastEventId;
    if (data.type !== "topic.message") return;
    const item = document.createElement("li");
    item.textContent = `${data.topic}: ${typeof data.message === "string" ? data.message : JSON.stringify(data.message)}`;
    $("#topic-messages").append(item);
  };
  source.onerror = () => {
    source.close();
    if (state.topicSource === source) state.topicTimer = setTimeout(connectTopics, 1000);
  };
}

function subscribe(event) {
  event.preventDefault();
  const topic = $("#topic").value.trim();
  if (!topic || state.topics.includes(topic)) return;
  state.topics.push(topic);
  $("#topic-list").textContent = state.topics.join(", ");
  connectTopics();
}

async function publish(event) {
  event.preventDefault();
  const topic = $("#topic").value.trim();
  const text = $("#topic-message").value;
  let message = text;
  try {
    message = JSON.parse(text);
  } catch {
    // plain text is a message too
  }
  try {
    await api("/notifications", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ channel: "websocket", topic, message }),
    });
    $("#topic-message").value = "";
  } catch (error) {
    $("#topic-list").textContent = `${state.topics.join(", ") || "none"} (publish refused: ${error.message})`;
  }
}

// --- a job's page ------------------------------------------------------------------------------------------------

async function showDetail(id, fetchAll) {
  state.detail = id;
  const panel = $("#detail");
  panel.hidden = false;
  $("#detail-title").textContent = `Job ${id}`;
  const job = fetchAll ? await api(`/jobs/${encodeURIComponent(id)}`).catch(() => state.jobs.get(id)) : state.jobs.get(id);
  $("#detail-job").textContent = JSON.stringify(job, null, 2);
  if (fetchAll) {
    const attempts = await api(`/jobs/${encodeURIComponent(id)}/attempts`).catch(() => ({ attempts: [] }));
    $("#detail-attempts").textContent = attempts.attempts.length ? JSON.stringify(attempts.attempts, null, 2) : "none";
    panel.scrollIntoView({ block: "nearest" });
  }
  $("#detail-events").replaceChildren(
    ...(state.timelines.get(id) || []).map((type) => {
      const item = document.createElement("li");
      item.textContent = type;
      return item;
    }),
  );
}

// --- wiring ------------------------------------------------------------------------------------------------------

function start() {
  $("#sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("#sign-in-error");
    error.textContent = "";
    try {
      await signIn($("#api-key").value.trim());
    } catch (failure) {
      state.key = null;
      error.textContent = failure.status === 401 ? "That key is not valid." : `Sign-in failed: ${failure.message}`;
    }
  });
  $("#sign-out").addEventListener("click", signOut);
  $("#channel").addEventListener("change", fillTemplate);
  $("#submit-form").addEventListener("submit", submitNotification);
  $("#upload-form").addEventListener("submit", upload);
  $("#status-filter").addEventListener("change", () => setFilter($("#status-filter").value, $("#kind-filter").value));
  $("#kind-filter").addEventListener("change", () => setFilter($("#status-filter").value, $("#kind-filter").value));
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => setFilter(tab.dataset.status, ""));
  }
  $("#more").addEventListener("click", () => loadJobs(false));
  $("#topic-form").addEventListener("submit", subscribe);
  $("#publish-form").addEventListener("submit", publish);
  $("#detail-close").addEventListener("click", () => {
    state.detail = null;
    $("#detail").hidden = true;
  });
  fillTemplate();
  // `conveyor run` prints a link with the development key in the fragment (never sent to a server): keep it in
  // this tab and take it out of the address bar and the history.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("key")) {
    sessionStorage.setItem(KEY_STORAGE, fragment.get("key"));
    history.replaceState(null, "", location.pathname);
  }
  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) {
    signIn(saved).catch((failure) => {
      state.key = null;
      if (failure.status === 401) sessionStorage.removeItem(KEY_STORAGE); // kept when the api is just away
      $("#sign-in-error").textContent =
        failure.status === 401 ? "That key is no longer valid." : `The api did not answer (${failure.message}); sign in again.`;
    });
  }
}

document.addEventListener("DOMContentLoaded", start);
