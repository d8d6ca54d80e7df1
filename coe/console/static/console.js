// The coe console: plain DOM, no build step. Data comes from /ui/api (read-only), /v1/route
// and /v1/chat/completions (the try panel) and /admin/experts (the experts page). Every value
// from the server is written with textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "coe.console.token";
const REFRESH_MS = 5000;
const PANELS = ["mix", "health", "requests", "try", "batches", "experts"];
const LOADERS = {
  mix: loadMix,
  health: loadHealth,
  requests: loadRequests,
  batches: loadBatches,
  experts: loadExperts,
};

const state = { session: null, panel: "mix", timer: null, editing: null };

// -- small helpers --------------------------------------------------------------------------
function $(id) {
  return document.getElementById(id);
}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function bar(fraction, kind) {
  const inner = el("span", { class: "bar-fill" + (kind ? " " + kind : "") });
  inner.style.width = Math.max(0, Math.min(1, fraction)) * 100 + "%";
  return el("span", { class: "bar" }, inner);
}

function badge(text, kind) {
  return el("span", { class: "badge " + (kind || text) }, text);
}

function fmtTime(seconds) {
  if (!seconds) return "–";
  const d = new Date(seconds * 1000);
  return d.toLocaleTimeString([], { hour12: false });
}

function fmtDate(seconds) {
  if (!seconds) return "–";
  return new Date(seconds * 1000).toLocaleString([], { hour12: false });
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function notice(message) {
  const box = $("notice");
  box.textContent = message || "";
  box.hidden = !message;
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(method, path, body, bearer) {
  const headers = { accept: "application/json" };
  const auth = bearer === undefined ? token() : bearer;
  if (auth) headers.authorization = "Bearer " + auth;
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 204) return null;
  let data = null;
  try {
    data = await resp.json();
  } catch (err) {
    data = null;
  }
  if (!resp.ok) {
    const message = (data && data.error && data.error.message) || resp.status + " " + resp.statusText;
    throw new HttpError(resp.status, message);
  }
  return data;
}

async function api(path) {
  try {
    return await call("GET", "/ui/api" + path);
  } catch (err) {
    if (err.status === 401) askToken(token() ? "That token is not accepted here." : "");
    throw err;
  }
}

// -- the token --------------------------------------------------------------------------------
function askToken(error) {
  $("token-dialog").hidden = false;
  $("token-error").textContent = error || "";
  $("token-error").hidden = !error;
  $("token-input").value = "";
  $("token-input").focus();
}

async function startSession() {
  try {
    state.session = await api("/session");
  } catch (err) {
    if (err.status !== 401) notice("The gateway did not answer: " + err.message);
    return false;
  }
  notice("");
  const s = state.session;
  const role = s.admin ? "admin" : s.auth_required ? "read-only" : "open (dev)";
  $("session-info").textContent = `v${s.version} · ${s.store} store · ${role}`;
  const select = $("try-model");
  const current = select.value;
  select.replaceChildren(...s.models.map((m) => el("option", { value: m }, m)));
  if (current && s.models.includes(current)) select.value = current;
  return true;
}

// -- panels -----------------------------------------------------------------------------------
function show(panel) {
  if (!PANELS.includes(panel)) panel = "mix";
  state.panel = panel;
  for (const name of PANELS) $("panel-" + name).hidden = name !== panel;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.panel === panel);
  }
  refresh();
}

async function refresh() {
  clearTimeout(state.timer);
  const load = LOADERS[state.panel];
  if (load && state.session) {
    try {
      await load();
    } catch (err) {
      if (err.status !== 401) notice(err.message);
    }
  }
  if (state.panel !== "experts" && state.panel !== "try") {
    state.timer = setTimeout(refresh, REFRESH_MS);
  }
}

async function loadMix() {
  const mix = await api("/mix");
  $("mix-total-5").textContent = mix.totals.last_5m;
  $("mix-total-60").textContent = mix.totals.last_60m;
  const hour = Math.max(1, mix.totals.last_60m);
  fill(
    $("mix-table").tBodies[0],
    mix.rows.map((r) =>
      el(
        "tr",
        { "data-expert": r.expert },
        el("td", {}, r.pipeline),
        el("td", {}, r.router),
        el("td", { class: "strong" }, r.expert),
        el("td", { class: "num" }, r.last_5m),
        el("td", { class: "num" }, r.last_60m),
        el("td", { class: "bar-col", title: `${Math.round((100 * r.last_60m) / hour)}%` },
          bar(r.last_60m / hour)),
      ),
    ),
  );
  $("mix-empty").hidden = mix.rows.length > 0;
  spark($("mix-spark"), mix.per_minute);
}

function spark(box, values) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 600;
  const height = 48;
  const top = Math.max(1, ...values);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "spark");
  const step = width / values.length;
  values.forEach((v, i) => {
    const h = (v / top) * (height - 2);
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", String(i * step + 1));
    rect.setAttribute("y", String(height - h));
    rect.setAttribute("width", String(Math.max(1, step - 2)));
    rect.setAttribute("height", String(h));
    const title = document.createElementNS(ns, "title");
    title.textContent = `${values.length - 1 - i} min ago: ${v}`;
    rect.append(title);
    svg.append(rect);
  });
  box.replaceChildren(svg);
}

const HEALTH_KIND = { ok: "ok", degraded: "warn", down: "bad", unavailable: "bad", unknown: "idle" };

async function loadHealth() {
  const data = await api("/experts");
  fill(
    $("health-table").tBodies[0],
    data.data.map((e) => {
      const replicas = e.replicas.length
        ? e.replicas.map((r) =>
            el(
              "div",
              { class: "replica" },
              badge(r.up ? "up" : "down", r.up ? "ok" : "bad"),
              " ",
              r.url,
              r.failures ? ` · ${r.failures} failures` : "",
              r.inflight ? ` · ${r.inflight} in flight` : "",
            ),
          )
        : [el("span", { class: "muted" }, "not called yet from this replica")];
      const pool = e.pool_state || {};
      return el(
        "tr",
        { "data-expert": e.name },
        el("td", { class: "strong" }, e.name),
        el("td", {}, e.model),
        el("td", {}, badge(e.health, HEALTH_KIND[e.health] || "idle")),
        el("td", {}, ...replicas),
        el("td", {}, e.pool || "–"),
        el("td", {}, e.pool ? badge(pool.state || "no state", residencyKind(pool.state)) : "–"),
        el("td", { class: "num" }, e.pool ? pool.queue ?? "–" : "–"),
        el("td", { class: "num" }, e.pool ? pool.active ?? "–" : "–"),
      );
    }),
  );
  fill(
    $("pools-table").tBodies[0],
    data.pools.map((p) =>
      el(
        "tr",
        {},
        el("td", { class: "strong" }, p.name),
        el("td", {}, badge(p.reachable ? "reachable" : "unreachable", p.reachable ? "ok" : "bad")),
        el("td", {}, p.controller || "–"),
        el("td", { class: "num" }, p.reachable ? `${p.occupied} / ${p.capacity}` : "–"),
      ),
    ),
  );
  $("pools-empty").hidden = data.pools.length > 0;
}

function residencyKind(value) {
  if (value === "resident") return "ok";
  if (value === "loading" || value === "asleep") return "warn";
  if (value === "unavailable") return "bad";
  return "idle";
}

async function loadRequests() {
  const data = await api("/requests?limit=200");
  fill(
    $("requests-table").tBodies[0],
    data.data.map((r) => {
      const candidates = r.candidates
        .slice(0, 4)
        .map((c) => `${c.expert} ${Number(c.score).toFixed(3)}`)
        .join(", ");
      const ok = r.status < 400;
      return el(
        "tr",
        { "data-request": r.request_id },
        el("td", {}, fmtTime(r.at)),
        el("td", { class: "mono" }, r.request_id),
        el("td", {}, r.model),
        el("td", {}, r.pipeline || "–"),
        el("td", {}, r.router),
        el("td", { class: "reason", title: r.reason }, r.reason),
        el("td", { class: "small", title: candidates }, candidates),
        el("td", { class: "num" }, r.k),
        el("td", {}, r.aggregation || "–"),
        el("td", { class: "strong" }, r.expert || "–"),
        el("td", { class: "num", title: r.error || "" }, badge(String(r.status), ok ? "ok" : "bad")),
        el("td", { class: "num" }, `${Math.round(r.latency_ms)} ms${r.stream ? " (stream)" : ""}`),
      );
    }),
  );
  $("requests-empty").hidden = data.data.length > 0;
}

async function loadBatches() {
  const data = await api("/batches?limit=50");
  fill(
    $("batches-table").tBodies[0],
    data.data.map((b) => {
      const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
      const done = (c.completed + c.failed) / Math.max(1, c.total);
      const kind = c.failed ? "warn" : b.status === "completed" ? "ok" : "";
      return el(
        "tr",
        { "data-batch": b.id },
        el("td", { class: "mono" }, b.id),
        el("td", {}, badge(b.status, batchKind(b.status))),
        el("td", {}, fmtDate(b.created_at)),
        el("td", {}, b.endpoint),
        el("td", { class: "bar-col" }, bar(done, kind)),
        el("td", { class: "num" }, `${c.completed} / ${c.failed} / ${c.total}`),
      );
    }),
  );
  $("batches-empty").hidden = data.data.length > 0;
}

function batchKind(status) {
  if (status === "completed") return "ok";
  if (status === "failed" || status === "expired" || status === "cancelled") return "bad";
  return "warn";
}

// -- try a query ------------------------------------------------------------------------------
function tryBearer() {
  return $("try-key").value.trim() || token();
}

async function tryQuery(send) {
  const query = $("try-query").value.trim();
  if (!query) return;
  const model = $("try-model").value || "coe/auto";
  $("try-error").hidden = true;
  $("try-answer-box").hidden = true;
  try {
    let decision;
    if (send) {
      const reply = await call(
        "POST",
        "/v1/chat/completions",
        { model, messages: [{ role: "user", content: query }], max_tokens: 128 },
        tryBearer(),
      );
      decision = {
        ...reply.coe.decision,
        pipeline: reply.coe.pipeline || model.replace(/^coe\//, ""),
        request_id: reply.coe.request_id,
      };
      $("try-expert").textContent = reply.coe.expert;
      $("try-answer").textContent = reply.choices[0].message.content || "";
      $("try-answer-box").hidden = false;
    } else {
      decision = await call("POST", "/v1/route", { query, model }, tryBearer());
    }
    showDecision(decision);
  } catch (err) {
    $("try-result").hidden = true;
    $("try-error").textContent = err.message;
    $("try-error").hidden = false;
  }
}

function showDecision(d) {
  $("try-pipeline").textContent = d.pipeline || "–";
  $("try-router").textContent = d.router;
  $("try-reason").textContent = d.reason;
  $("try-category").textContent = d.category || "–";
  $("try-k").textContent = d.k;
  $("try-rid").textContent = d.request_id || "–";
  const chosen = new Set(d.chosen || d.candidates.slice(0, d.k).map((c) => c.expert));
  const top = Math.max(1e-9, ...d.candidates.map((c) => Math.abs(c.score)));
  fill(
    $("try-candidates").tBodies[0],
    d.candidates.map((c, i) =>
      el(
        "tr",
        { class: chosen.has(c.expert) ? "chosen" : "", "data-expert": c.expert },
        el("td", { class: "num" }, i + 1),
        el("td", { class: "strong" }, c.expert),
        el("td", { class: "num" }, Number(c.score).toFixed(4)),
        el("td", { class: "bar-col" }, bar(Math.abs(c.score) / top)),
        el("td", {}, chosen.has(c.expert) ? "✔" : ""),
      ),
    ),
  );
  $("try-result").hidden = false;
}

// -- experts (admin API) ----------------------------------------------------------------------
async function loadExperts() {
  let data;
  try {
    data = await call("GET", "/admin/experts");
  } catch (err) {
    fill($("experts-table").tBodies[0], []);
    expertError(err.status === 401 ? "Listing and editing experts needs the admin token." : err.message);
    return;
  }
  expertError("");
  fill(
    $("experts-table").tBodies[0],
    data.data
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((e) =>
        el(
          "tr",
          { "data-expert": e.name },
          el("td", { class: "strong" }, e.name),
          el("td", {}, e.model),
          el("td", { class: "small" }, e.endpoints.join(" ")),
          el("td", { class: "small" }, e.description),
          el("td", { class: "num" }, e.cost),
          el(
            "td",
            { class: "actions" },
            el("button", { type: "button", class: "secondary edit", onclick: () => editExpert(e) }, "Edit"),
            el("button", { type: "button", class: "danger remove", onclick: () => removeExpert(e.name) }, "Remove"),
          ),
        ),
      ),
  );
}

function expertError(message) {
  $("expert-error").textContent = message || "";
  $("expert-error").hidden = !message;
}

function editExpert(e) {
  state.editing = e;
  $("expert-form-title").textContent = "Edit " + e.name;
  $("expert-save").textContent = "Save";
  $("expert-cancel").hidden = false;
  $("ex-name").value = e.name;
  $("ex-name").disabled = true;
  $("ex-model").value = e.model;
  $("ex-endpoints").value = e.endpoints.join("\n");
  $("ex-description").value = e.description;
  $("ex-skills").value = (e.skills || []).join(", ");
  $("ex-cost").value = e.cost;
  $("ex-concurrency").value = e.limits.max_concurrency;
  $("ex-timeout").value = e.limits.timeout_s;
  $("ex-system").value = e.system_prompt || "";
  $("ex-model").focus();
}

function resetExpertForm() {
  state.editing = null;
  $("expert-form").reset();
  $("ex-name").disabled = false;
  $("expert-form-title").textContent = "Register an expert";
  $("expert-save").textContent = "Register";
  $("expert-cancel").hidden = true;
}

function expertBody() {
  const limits = { ...(state.editing ? state.editing.limits : {}) };
  const concurrency = $("ex-concurrency").value;
  const timeout = $("ex-timeout").value;
  if (concurrency) limits.max_concurrency = parseInt(concurrency, 10);
  if (timeout) limits.timeout_s = parseFloat(timeout);
  const body = {
    model: $("ex-model").value.trim(),
    endpoints: $("ex-endpoints").value.split(/[\s,]+/).filter(Boolean),
    description: $("ex-description").value,
    skills: $("ex-skills").value.split(",").map((s) => s.trim()).filter(Boolean),
    cost: parseFloat($("ex-cost").value || "0"),
    system_prompt: $("ex-system").value.trim() || null,
    limits,
  };
  if (!state.editing) body.name = $("ex-name").value.trim();
  return body;
}

async function saveExpert(event) {
  event.preventDefault();
  expertError("");
  const editing = state.editing;
  try {
    if (editing) {
      await call("PATCH", "/admin/experts/" + encodeURIComponent(editing.name), expertBody());
    } else {
      await call("POST", "/admin/experts", expertBody());
    }
  } catch (err) {
    expertError(err.status === 401 ? "Editing experts needs the admin token." : err.message);
    return;
  }
  $("expert-status").textContent = (editing ? "Saved " : "Registered ") + (editing ? editing.name : $("ex-name").value);
  resetExpertForm();
  await loadExperts();
}

async function removeExpert(name) {
  if (!window.confirm(`Remove expert ${name}? Every replica stops routing to it.`)) return;
  expertError("");
  try {
    await call("DELETE", "/admin/experts/" + encodeURIComponent(name));
  } catch (err) {
    expertError(err.message);
    return;
  }
  $("expert-status").textContent = "Removed " + name;
  await loadExperts();
}

// -- start --------------------------------------------------------------------------------------
function wire() {
  $("token-button").addEventListener("click", () => askToken(""));
  $("token-cancel").addEventListener("click", () => {
    $("token-dialog").hidden = true;
  });
  $("token-forget").addEventListener("click", async () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token-dialog").hidden = true;
    if (await startSession()) refresh();
  });
  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-dialog").hidden = true;
    if (await startSession()) refresh();
  });
  $("try-form").addEventListener("submit", (event) => {
    event.preventDefault();
    tryQuery(false);
  });
  $("try-send").addEventListener("click", () => tryQuery(true));
  $("expert-form").addEventListener("submit", saveExpert);
  $("expert-cancel").addEventListener("click", resetExpertForm);
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
}

async function main() {
  wire();
  await startSession();
  show(location.hash.slice(1) || "mix");
}

document.addEventListener("DOMContentLoaded", main);
