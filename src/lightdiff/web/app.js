// lightdiff web UI: plain JavaScript over the native API (/api). No build step, no network but this server.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) e.append(kid);
  return e;
};
const FINISHED = ["done", "failed", "cancelled"];
const IMAGE_FIELDS = ["init_image", "mask_image", "control_image"];
const SKIP_PARAMS = new Set(["workflow", "model", "prompt", "negative_prompt", "weights", ...IMAGE_FIELDS]);
const state = { models: [], workflows: {}, templates: [], job: null, abort: null };

// ---- token: from the URL fragment `lightdiff serve` prints (#token=...), kept in localStorage ----
(function takeTokenFromHash() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { localStorage.setItem("lightdiff-token", decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
})();
const authHeaders = () => {
  const t = localStorage.getItem("lightdiff-token");
  return t ? { Authorization: "Bearer " + t } : {};
};

function banner(msg) {
  const b = $("#banner");
  b.textContent = msg || "";
  b.hidden = !msg;
}

async function api(path, opts = {}) {
  const headers = { ...authHeaders(), ...(opts.headers || {}) };
  if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(opts.json); }
  const res = await fetch(path, { ...opts, headers });
  if (res.status === 401) { $("#auth").hidden = false; }
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json() : null;
  if (!res.ok) {
    const e = (body && body.error) || {};
    const err = new Error(`${e.message || res.statusText} ${e.hint || ""}`.trim());
    err.code = e.code; err.status = res.status;
    throw err;
  }
  return body;
}

// Images go through fetch so the token header is sent; <img> gets an object URL.
async function loadImage(img, url) {
  const res = await fetch(url, { headers: authHeaders() });
  if (!res.ok) throw new Error(`image ${url}: ${res.status}`);
  img.src = URL.createObjectURL(await res.blob());
}

// Server-Sent Events over fetch (EventSource cannot send the token header).
async function followEvents(jobId, onEvent, signal) {
  const res = await fetch(`/api/jobs/${jobId}/events`, { headers: authHeaders(), signal });
  if (!res.ok) throw new Error(`events: ${res.status}`);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, cut); buf = buf.slice(cut + 2);
      const data = chunk.split("\n").filter(l => l.startsWith("data:")).map(l => l.slice(5).trim()).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

// ---- tabs ----
function showTab(name) {
  document.querySelectorAll("nav button").forEach(b => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach(t => t.classList.toggle("active", t.id === "tab-" + name));
  if (name === "queue") refreshQueue();
  if (name === "gallery") refreshGallery();
  if (name === "system") refreshSystem();
}
document.querySelectorAll("nav button").forEach(b => b.addEventListener("click", () => showTab(b.dataset.tab)));

// ---- generate ----
function fieldSchema(prop) {
  // pydantic: {type} or {anyOf: [{type}, {type: "null"}]}, enums as {enum} or {const}
  const options = prop.anyOf ? prop.anyOf.filter(p => p.type !== "null") : [prop];
  const p = options[0] || {};
  const values = options.flatMap(o => o.enum || (o.const !== undefined ? [o.const] : []));
  return { type: p.type, items: p.items, values, min: p.minimum ?? p.exclusiveMinimum, max: p.maximum ?? p.exclusiveMaximum };
}

function modelDefaults() {
  const m = state.models.find(m => m.id === $("#model").value);
  return m ? m.defaults : {};
}

function renderWorkflowFields() {
  const wf = state.workflows[$("#workflow").value];
  const params = $("#param-fields"), imgs = $("#image-fields");
  params.replaceChildren(); imgs.replaceChildren();
  if (!wf) return;
  const props = wf.schema.properties || {};
  const defaults = modelDefaults();
  for (const [name, prop] of Object.entries(props)) {
    if (IMAGE_FIELDS.includes(name) || name.endsWith("_image")) {
      const preview = el("img", { class: "preview", alt: name, hidden: true });
      const input = el("input", { type: "file", accept: "image/png,image/jpeg,image/webp", "data-image-field": name });
      input.addEventListener("change", async () => {
        const file = input.files[0];
        if (!file) { delete input.dataset.value; preview.hidden = true; return; }
        input.dataset.value = await new Promise((ok, bad) => {
          const r = new FileReader(); r.onload = () => ok(r.result); r.onerror = bad; r.readAsDataURL(file);
        });
        preview.src = input.dataset.value; preview.hidden = false;
      });
      imgs.append(el("label", {}, `${name.replace("_", " ")}${(wf.schema.required || []).includes(name) ? " (required)" : ""}`, input, preview));
      continue;
    }
    if (SKIP_PARAMS.has(name)) continue;
    const s = fieldSchema(prop);
    let input;
    if (s.type === "boolean") {
      input = el("input", { type: "checkbox", name, "data-kind": "boolean" });
      if (prop.default === true) input.checked = true;
      params.append(el("label", { class: "check", title: prop.description || "" }, input, name));
      continue;
    }
    if (s.values.length) {
      input = el("select", { name, "data-kind": "string" }, el("option", { value: "" }, "(default)"),
                 ...s.values.map(v => el("option", { value: v }, String(v))));
    } else if (s.type === "array") {
      input = el("textarea", { name, rows: 2, "data-kind": "list:" + ((s.items || {}).type || "string"), placeholder: "one per line" });
    } else {
      const numeric = s.type === "integer" || s.type === "number";
      input = el("input", { name, type: numeric ? "number" : "text", "data-kind": s.type || "string",
                            step: s.type === "number" ? "any" : (["width", "height"].includes(name) ? 8 : 1),
                            min: s.min, max: s.max });
      const placeholder = defaults[name === "guidance" ? "guidance" : name] ?? prop.default;
      if (placeholder !== undefined && placeholder !== null) input.placeholder = String(placeholder);
    }
    params.append(el("label", { title: prop.description || "" }, name, input));
  }
}

function collectRequest() {
  const req = { workflow: $("#workflow").value, model: $("#model").value, prompt: $("#prompt").value };
  if ($("#negative_prompt").value.trim()) req.negative_prompt = $("#negative_prompt").value;
  for (const input of $("#param-fields").querySelectorAll("[name]")) {
    const kind = input.dataset.kind, v = input.value;
    if (kind === "boolean") { if (input.checked) req[input.name] = true; continue; }
    if (v === "") continue;
    if (kind === "integer") req[input.name] = parseInt(v, 10);
    else if (kind === "number") req[input.name] = parseFloat(v);
    else if (kind && kind.startsWith("list:")) {
      const items = v.split("\n").map(x => x.trim()).filter(Boolean);
      req[input.name] = kind === "list:integer" ? items.map(x => parseInt(x, 10)) : items;
    } else req[input.name] = v;
  }
  for (const input of $("#image-fields").querySelectorAll("[data-image-field]")) {
    if (input.dataset.value) req[input.dataset.imageField] = input.dataset.value;
  }
  return req;
}

function applyTemplate(name) {
  const t = state.templates.find(t => t.name === name);
  if (!t) return;
  const req = t.request;
  if (req.workflow && state.workflows[req.workflow]) $("#workflow").value = req.workflow;
  renderWorkflowFields();
  $("#prompt").value = req.prompt || "";
  $("#negative_prompt").value = req.negative_prompt || "";
  for (const [k, v] of Object.entries(req)) {
    const input = $(`#param-fields [name="${k}"]`);
    if (input) {
      if (input.dataset.kind === "boolean") input.checked = !!v;
      else input.value = Array.isArray(v) ? v.join("\n") : v;
    }
    const img = $(`#image-fields [data-image-field="${k}"]`);
    if (img && typeof v === "string" && v.startsWith("data:")) {
      img.dataset.value = v;
      const preview = img.parentElement.querySelector("img"); preview.src = v; preview.hidden = false;
    }
  }
}

function setStatus(text, cls = "") {
  const s = $("#gen-status"); s.textContent = text; s.className = "status " + cls;
}

async function showJobResult(job, box, paramsBox) {
  for (const im of job.images) {
    const img = el("img", { alt: `image ${im.index}`, "data-index": im.index, title: `seed ${im.seed}` });
    box.append(img);
    loadImage(img, im.url).catch(e => banner(e.message));
  }
  if (paramsBox) {
    const meta = job.images.length ? await api(job.images[0].metadata_url).catch(() => null) : null;
    paramsBox.textContent = JSON.stringify({ request: job.request, warnings: job.warnings, timings: job.timings,
                                             error: job.error, metadata: meta }, null, 2);
  }
}

async function watchJob(job, ui) {
  // ui: {status(text, cls), progress(value), event(text)}; resolves with the finished job
  const describe = ev => ev.type === "running" ? `running: step ${ev.step} of ${ev.steps}`
    : ev.type === "failed" ? `failed: ${(ev.error || {}).message || ""}` : ev.type;
  try {
    await followEvents(job.id, ev => {
      ui.event(describe(ev));
      if (ev.type === "running") { ui.progress(ev.step / ev.steps); ui.status(describe(ev), "running"); }
      else ui.status(describe(ev), ev.type);
    }, ui.signal);
  } catch (e) {
    if (e.name !== "AbortError") banner("Lost the event stream: " + e.message);
  }
  return api(`/api/jobs/${job.id}`);
}

$("#gen-form").addEventListener("submit", async ev => {
  ev.preventDefault();
  banner("");
  $("#gen-images").replaceChildren(); $("#gen-events").replaceChildren(); $("#gen-params").textContent = "";
  $("#gen-progress").value = 0;
  let job;
  try {
    job = await api("/api/jobs", { method: "POST", json: collectRequest() });
  } catch (e) {
    setStatus("Refused: " + e.message, "failed");
    return;
  }
  state.job = job;
  $("#gen-cancel").hidden = false;
  $("#generate").disabled = true;
  setStatus(`queued (job ${job.id.slice(0, 8)}, position ${job.queue_position ?? 0})`, "queued");
  const done = await watchJob(job, {
    status: setStatus, progress: v => { $("#gen-progress").value = v; },
    event: text => $("#gen-events").append(el("li", {}, text)),
  });
  $("#gen-cancel").hidden = true;
  $("#generate").disabled = false;
  setStatus(done.status === "failed" ? `failed: ${done.error.message} ${done.error.hint || ""}` : done.status, done.status);
  if (done.status === "done") $("#gen-progress").value = 1;
  await showJobResult(done, $("#gen-images"), $("#gen-params"));
});

$("#gen-cancel").addEventListener("click", async () => {
  if (state.job) await api(`/api/jobs/${state.job.id}/cancel`, { method: "POST" }).catch(e => banner(e.message));
});
$("#workflow").addEventListener("change", renderWorkflowFields);
$("#model").addEventListener("change", renderWorkflowFields);
$("#template").addEventListener("change", e => applyTemplate(e.target.value));
$("#save-token").addEventListener("click", () => {
  localStorage.setItem("lightdiff-token", $("#token").value.trim());
  $("#auth").hidden = true; banner(""); init();
});

// ---- queue and history ----
async function refreshQueue() {
  const status = $("#queue-filter").value;
  let data;
  try { data = await api("/api/jobs?limit=100" + (status ? "&status=" + status : "")); }
  catch (e) { banner(e.message); return; }
  $("#queue-counts").textContent = Object.entries(data.counts).map(([k, v]) => `${k} ${v}`).join(" · ");
  const rows = data.jobs.map(j => {
    const actions = [];
    if (!FINISHED.includes(j.status) && !j.cancel_requested)
      actions.push(el("button", { class: "cancel", type: "button", onclick: () => act(j.id, "cancel") }, "Cancel"));
    if (j.status === "failed" || j.status === "cancelled")
      actions.push(el("button", { class: "retry", type: "button", onclick: () => act(j.id, "retry") }, "Retry"));
    const progress = j.progress ? `${j.progress.step}/${j.progress.steps}` : (j.queue_position !== null ? `#${j.queue_position + 1} in queue` : "");
    return el("tr", { "data-job": j.id, "data-status": j.status },
      el("td", { title: j.id }, j.id.slice(0, 8)),
      el("td", {}, new Date(j.created * 1000).toLocaleTimeString()),
      el("td", {}, j.workflow), el("td", {}, j.model),
      el("td", { class: "prompt", title: j.request.prompt || "" }, j.request.prompt || ""),
      el("td", {}, el("span", { class: "s-" + j.status, title: j.error ? j.error.message : "" },
                      j.status + (j.cancel_requested && !FINISHED.includes(j.status) ? " (cancelling)" : ""))),
      el("td", {}, progress), el("td", {}, ...actions));
  });
  $("#queue-table tbody").replaceChildren(...rows);
}
async function act(id, verb) {
  try { await api(`/api/jobs/${id}/${verb}`, { method: "POST" }); } catch (e) { banner(e.message); }
  refreshQueue();
}
$("#queue-filter").addEventListener("change", refreshQueue);
$("#queue-refresh").addEventListener("click", refreshQueue);
setInterval(() => { if ($("#tab-queue").classList.contains("active")) refreshQueue(); }, 1500);

// ---- gallery ----
async function refreshGallery() {
  let data;
  try { data = await api("/api/jobs?status=done&limit=60"); } catch (e) { banner(e.message); return; }
  const tiles = [];
  for (const j of data.jobs) for (const im of j.images) {
    const img = el("img", { alt: j.request.prompt || "image", title: `${j.model} · seed ${im.seed}` });
    img.addEventListener("click", async () => {
      $("#gallery-detail").hidden = false;
      $("#gallery-img").src = img.src;
      $("#gallery-meta").textContent = JSON.stringify(await api(im.metadata_url).catch(e => ({ error: e.message })), null, 2);
    });
    loadImage(img, im.url).catch(() => {});
    tiles.push(img);
  }
  $("#gallery").replaceChildren(...(tiles.length ? tiles : [el("p", {}, "No finished images yet.")]));
}
$("#gallery-close").addEventListener("click", () => { $("#gallery-detail").hidden = true; });

// ---- compare: one prompt and seed across several models ----
$("#compare-form").addEventListener("submit", async ev => {
  ev.preventDefault();
  banner("");
  const models = [...document.querySelectorAll("#cmp-models input:checked")].map(i => i.value);
  if (!models.length) { banner("Pick at least one model to compare."); return; }
  const base = { workflow: "txt2img", prompt: $("#cmp-prompt").value, seed: parseInt($("#cmp-seed").value || "0", 10) };
  for (const k of ["steps", "width", "height"]) { const v = $("#cmp-" + k).value; if (v) base[k] = parseInt(v, 10); }
  const cols = $("#cmp-results"); cols.replaceChildren();
  await Promise.all(models.map(async model => {
    const status = el("div", { class: "status" }, "submitting"), bar = el("progress", { max: 1, value: 0 });
    const images = el("div", { class: "images" });
    cols.append(el("div", { class: "col", "data-model": model }, el("strong", {}, model), status, bar, images));
    let job;
    try { job = await api("/api/jobs", { method: "POST", json: { ...base, model } }); }
    catch (e) { status.textContent = "refused: " + e.message; status.className = "status failed"; return; }
    const done = await watchJob(job, { status: (t, c) => { status.textContent = t; status.className = "status " + c; },
                                       progress: v => { bar.value = v; }, event: () => {} });
    status.textContent = done.status === "done" ? `done in ${(done.timings.run_s || 0).toFixed(2)} s` : done.status;
    await showJobResult(done, images, null);
  }));
});

// ---- system ----
async function refreshSystem() {
  try { $("#system").textContent = JSON.stringify(await api("/api/system"), null, 2); }
  catch (e) { banner(e.message); }
}

// ---- start ----
async function init() {
  try {
    const [models, workflows, templates] = await Promise.all([api("/api/models"), api("/api/workflows"), api("/api/templates")]);
    state.models = models.models.filter(m => m.served);
    $("#model").replaceChildren(...state.models.map(m => el("option", { value: m.id, selected: m.id === models.default }, m.id)));
    state.workflows = Object.fromEntries(workflows.workflows.filter(w => w.available).map(w => [w.name, w]));
    $("#workflow").replaceChildren(...Object.keys(state.workflows).map(n => el("option", { value: n, selected: n === "txt2img" }, n)));
    state.templates = templates.templates;
    $("#template").replaceChildren(el("option", { value: "" }, "(none)"),
      ...state.templates.map(t => el("option", { value: t.name, title: t.description }, t.name)));
    $("#cmp-models").replaceChildren(...state.models.map(m => el("label", { class: "check" },
      el("input", { type: "checkbox", value: m.id, checked: m.is_twin }), m.id)));
    renderWorkflowFields();
  } catch (e) {
    banner("Cannot reach the API: " + e.message);
  }
}
init();
