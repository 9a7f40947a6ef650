// The Flatlay web page: send photos to the API, follow their progress, compare and download.
// Plain ES modules, no build step. Every call goes through `api()`, which adds the API key.

import { readZip, writeZip } from "./zip.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 600;
const MAX_UPLOADS_AT_ONCE = 3;
const IMAGE_TYPES = { jpg: "image/jpeg", jpeg: "image/jpeg", png: "image/png", webp: "image/webp" };
const STATUS_LABEL = {
  waiting: "Waiting", uploading: "Uploading", queued: "Queued", running: "Running",
  succeeded: "Done", failed: "Failed", canceled: "Canceled", rejected: "Rejected",
};
const ACTIVE = new Set(["queued", "running"]);

const items = [];
let nextId = 1;
let selectedId = null;
let uploadsInFlight = 0;
let pollTimer = null;

// --- API ------------------------------------------------------------------------------------

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, init = {}) {
  const response = await fetch(path, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
  return response;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error.message || body.error.code;
  } catch (_) { /* not JSON: fall through */ }
  if (response.status === 401 || response.status === 403) return "the API key was refused";
  return `the server answered ${response.status} ${response.statusText}`;
}

// --- Options --------------------------------------------------------------------------------

function currentOptions() {
  const kind = document.querySelector('input[name="background-kind"]:checked').value;
  const background = kind === "custom" ? $("background-colour").value : kind;
  return {
    pipeline: $("pipeline").value,
    preset: $("preset").value,
    output_size: $("output-size").value,
    background,
    format: $("format").value,
    seed: $("seed").value.trim(),
    hint: $("hint").value.trim(),
  };
}

function optionsProblem(opts) {
  if (opts.background === "transparent" && opts.format === "jpeg") {
    return "JPEG has no transparency: choose PNG or WebP for a transparent background.";
  }
  if (opts.seed !== "" && !/^\d+$/.test(opts.seed)) return "The seed must be a whole number.";
  if (opts.seed !== "" && Number(opts.seed) > 4294967295) return "The seed must be at most 4294967295.";
  if (opts.hint.length > 200) return "The hint must be at most 200 characters.";
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(opts.hint)) return "The hint may not contain control characters.";
  return null;
}

function checkOptions() {
  const opts = currentOptions();
  const problem = optionsProblem(opts);
  const box = $("options-error");
  box.textContent = problem || "";
  box.hidden = !problem;
  describePreset(opts);
  return problem;
}

// --- Presets: the defaults of size, background and format, and what a result is checked
// against. Choosing one sets those options; changing them afterwards is allowed (the
// result's compliance check then says what the preset would refuse).

const presets = new Map();

function presetWarnings(preset, opts) {
  const warnings = [];
  if (Number(opts.output_size) !== preset.size) warnings.push(`${preset.size} px`);
  if (!preset.formats.includes(opts.format)) {
    warnings.push(preset.formats.map((f) => f.toUpperCase()).join(" or "));
  }
  if (preset.background !== opts.background) warnings.push(`a ${preset.background} background`);
  return warnings;
}

function describePreset(opts) {
  const preset = presets.get(opts.preset);
  const hint = $("preset-hint");
  if (!preset) return;
  const warnings = presetWarnings(preset, opts);
  hint.classList.toggle("hint-warn", warnings.length > 0);
  hint.textContent = warnings.length
    ? `${preset.name} expects ${warnings.join(", ")}: results will fail its check.`
    : preset.description;
}

function applyPreset(name) {
  const preset = presets.get(name);
  if (!preset) return;
  const size = $("output-size");
  if (![...size.options].some((o) => Number(o.value) === preset.size)) {
    const option = new Option(`${preset.size} × ${preset.size} px`, String(preset.size));
    const after = [...size.options].find((o) => Number(o.value) > preset.size);
    size.add(option, after || null);
  }
  size.value = String(preset.size);
  const kinds = [...document.querySelectorAll('input[name="background-kind"]')];
  const exact = kinds.find((k) => k.value === preset.background);
  if (exact) {
    exact.checked = true;
  } else {
    kinds.find((k) => k.value === "custom").checked = true;
    $("background-colour").value = preset.background;
  }
  $("format").value = preset.formats[0];
  checkOptions();
}

async function loadPresets() {
  const select = $("preset");
  const hint = $("preset-hint");
  try {
    const response = await api("/presets");
    if (!response.ok) throw new Error(await errorMessage(response));
    const { default: standard, presets: list } = await response.json();
    for (const preset of list) presets.set(preset.name, preset);
    select.replaceChildren(...list.map((preset) => {
      const option = new Option(preset.name, preset.name);
      option.selected = preset.name === standard;
      return option;
    }));
    checkOptions();
  } catch (err) {
    hint.textContent = `Could not list presets: ${err.message}`;
    hint.classList.add("hint-error");
  }
}

async function loadPipelines() {
  const select = $("pipeline");
  const hint = $("pipeline-hint");
  try {
    const response = await api("/pipelines");
    if (!response.ok) throw new Error(await errorMessage(response));
    const { default: best, pipelines } = await response.json();
    select.replaceChildren(...pipelines.map((name) => {
      const option = new Option(name === best ? `${name} (recommended)` : name, name);
      option.selected = name === best;
      return option;
    }));
    hint.textContent = `${pipelines.length} available; the recommended one is preselected.`;
  } catch (err) {
    hint.textContent = `Could not list pipelines: ${err.message}`;
    hint.classList.add("hint-error");
  }
}

async function checkService() {
  const badge = $("service-state");
  try {
    const response = await fetch("/readyz");
    badge.dataset.state = response.ok ? "ready" : "down";
    badge.textContent = response.ok ? "Service ready" : "Service unavailable";
  } catch (_) {
    badge.dataset.state = "down";
    badge.textContent = "Service unreachable";
  }
}

// --- Messages -------------------------------------------------------------------------------

function say(text, kind = "error") {
  const box = $("messages");
  const message = document.createElement("div");
  message.className = `message message-${kind}`;
  const span = document.createElement("span");
  span.textContent = text;
  const close = document.createElement("button");
  close.type = "button";
  close.className = "message-close";
  close.setAttribute("aria-label", "Dismiss message");
  close.textContent = "×";
  close.addEventListener("click", () => message.remove());
  message.append(span, close);
  box.append(message);
}

// --- Adding files ---------------------------------------------------------------------------

function isZip(file) {
  return /\.zip$/i.test(file.name) || file.type === "application/zip"
    || file.type === "application/x-zip-compressed";
}

function extension(name) {
  const match = /\.([^./]+)$/.exec(name);
  return match ? match[1].toLowerCase() : "";
}

function addItem(file, from = null) {
  const item = {
    id: nextId++, name: file.name, from, file, status: "waiting", stage: "", percent: 0,
    assetId: null, error: null, resultBlob: null, resultUrl: null, resultName: null,
    timings: {}, sideOutputs: {}, compliance: null, startedAt: null, finishedAt: null,
    originalUrl: URL.createObjectURL(file), options: currentOptions(),
  };
  items.push(item);
  renderItem(item);
  return item;
}

function rejectItem(item, message) {
  item.status = "rejected";
  item.error = message;
  item.finishedAt = performance.now();
  say(`${item.name} was not accepted: ${message}`);
  renderItem(item);
}

async function addFiles(fileList) {
  const problem = checkOptions();
  if (problem) {
    say(`Nothing was sent. ${problem}`);
    $("options-error").scrollIntoView({ block: "nearest" });
    return;
  }
  for (const file of fileList) {
    if (!isZip(file)) {
      addItem(file);
      continue;
    }
    let entries;
    try {
      entries = await readZip(file);
    } catch (err) {
      rejectItem(addItem(file), `could not read the ZIP: ${err.message}`);
      continue;
    }
    const photos = entries.filter((e) => !e.name.startsWith("__MACOSX/")
      && !e.name.split("/").pop().startsWith("."));
    if (!photos.length) say(`${file.name} holds no files.`);
    for (const entry of photos) {
      const base = entry.name.split("/").pop();
      try {
        const bytes = await entry.read();
        const type = IMAGE_TYPES[extension(base)] || "application/octet-stream";
        addItem(new File([bytes], base, { type }), file.name);
      } catch (err) {
        rejectItem(addItem(new File([], base), file.name), err.message);
      }
    }
  }
  pumpUploads();
  renderSummary();
}

// --- Upload and progress --------------------------------------------------------------------

function pumpUploads() {
  for (const item of items) {
    if (uploadsInFlight >= MAX_UPLOADS_AT_ONCE) break;
    if (item.status === "waiting") upload(item);
  }
}

async function upload(item) {
  uploadsInFlight++;
  item.status = "uploading";
  item.startedAt = performance.now();
  renderItem(item);
  const form = new FormData();
  form.append("file", item.file, item.name);
  for (const [key, value] of Object.entries(item.options)) {
    if (value !== "") form.append(key, value);
  }
  try {
    const response = await api("/assets", { method: "POST", body: form });
    if (!response.ok) {
      rejectItem(item, await errorMessage(response));
    } else {
      const created = await response.json();
      item.assetId = created.id;
      item.status = created.status;
      renderItem(item);
      schedulePoll();
    }
  } catch (err) {
    rejectItem(item, `the upload failed: ${err.message}`);
  } finally {
    uploadsInFlight--;
    pumpUploads();
    renderSummary();
  }
}

function schedulePoll() {
  if (pollTimer === null) pollTimer = setTimeout(poll, POLL_MS);
}

async function poll() {
  pollTimer = null;
  const active = items.filter((i) => ACTIVE.has(i.status));
  await Promise.all(active.map(refresh));
  if (items.some((i) => ACTIVE.has(i.status))) schedulePoll();
  renderSummary();
}

async function refresh(item) {
  let status;
  try {
    const response = await api(`/assets/${item.assetId}`);
    if (!response.ok) {
      item.stage = await errorMessage(response);
      renderItem(item);
      return;
    }
    status = await response.json();
  } catch (_) {
    item.stage = "connection lost, retrying…";
    renderItem(item);
    return;
  }
  item.stage = status.progress.stage || "";
  item.percent = status.progress.percent;
  item.timings = status.timings || {};
  item.sideOutputs = status.side_outputs || {};
  item.compliance = status.compliance || null;
  if (status.status === "succeeded") {
    await fetchResult(item, status);
  } else {
    item.status = status.status;
    if (status.status === "failed") {
      item.error = status.error ? status.error.message : "the job failed";
      item.finishedAt = performance.now();
      say(`${item.name} failed: ${item.error}`);
    } else if (status.status === "canceled") {
      item.finishedAt = performance.now();
    }
  }
  renderItem(item);
}

async function fetchResult(item, status) {
  const response = await api(status.links.result);
  if (!response.ok) {
    item.stage = `result not fetched: ${await errorMessage(response)}`;
    return; // stays active: polled again
  }
  item.resultBlob = await response.blob();
  item.resultUrl = URL.createObjectURL(item.resultBlob);
  item.resultName = resultName(item.name, status.options.format);
  item.status = "succeeded";
  item.finishedAt = performance.now();
  if (selectedId === null) select(item.id, false);
}

function resultName(name, format) {
  const stem = name.replace(/\.[^.]+$/, "") || "photo";
  const ext = format === "jpeg" ? "jpg" : format;
  return `${stem}-flatlay.${ext}`;
}

// --- Rendering ------------------------------------------------------------------------------

const rows = new Map();

function rowFor(item) {
  let row = rows.get(item.id);
  if (row) return row;
  row = $("row-template").content.firstElementChild.cloneNode(true);
  row.dataset.item = item.id;
  const thumb = row.querySelector(".thumb img");
  thumb.src = item.originalUrl;
  // Not an image (a rejected file): the box stays, with the file's extension in it.
  thumb.addEventListener("error", () => {
    thumb.hidden = true;
    row.querySelector(".thumb").dataset.ext = extension(item.name).slice(0, 4) || "?";
  }, { once: true });
  const name = row.querySelector(".file-name");
  name.textContent = item.name;
  name.title = `Compare ${item.name} with its result`;
  name.addEventListener("click", () => select(item.id, true));
  row.querySelector(".file-from").textContent = item.from ? `from ${item.from}` : "";
  row.querySelector(".download").setAttribute("aria-label", `Download the result of ${item.name}`);
  $("run-rows").append(row);
  rows.set(item.id, row);
  $("run-empty").hidden = true;
  return row;
}

function formatSeconds(ms) {
  return ms < 10000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`;
}

function renderItem(item) {
  const row = rowFor(item);
  row.dataset.status = item.status;
  row.classList.toggle("selected", item.id === selectedId);
  const chip = row.querySelector(".chip");
  chip.textContent = STATUS_LABEL[item.status] || item.status;
  chip.dataset.status = item.status;

  const percent = item.status === "succeeded" ? 100 : item.percent;
  const bar = row.querySelector(".bar");
  bar.setAttribute("aria-valuenow", String(percent));
  bar.setAttribute("aria-label", `${item.name} progress`);
  bar.querySelector(".bar-fill").style.width = `${percent}%`;
  bar.hidden = item.status === "rejected";
  const stage = row.querySelector(".stage");
  if (item.status === "rejected" || item.status === "failed") {
    stage.textContent = item.error;
    stage.classList.add("stage-error");
  } else {
    stage.classList.remove("stage-error");
    stage.textContent = item.status === "succeeded" ? "done"
      : item.status === "waiting" ? "waiting to upload"
        : item.status === "uploading" ? "uploading…"
          : `${item.stage || item.status} · ${percent}%`;
  }
  const end = item.finishedAt || (item.startedAt ? performance.now() : null);
  row.querySelector(".time").textContent = item.status !== "rejected" && item.startedAt && end
    ? formatSeconds(end - item.startedAt) : "";

  const done = item.status === "succeeded";
  row.querySelector(".file-name").setAttribute("aria-pressed", String(item.id === selectedId));
  const download = row.querySelector(".download");
  download.hidden = !done;
  if (done) {
    download.href = item.resultUrl;
    download.download = item.resultName;
  }
  if (item.id === selectedId) renderViewer();
}

function renderSummary() {
  const total = items.length;
  const count = (s) => items.filter((i) => i.status === s).length;
  const done = count("succeeded");
  const parts = [];
  if (total) parts.push(`${done} of ${total} done`);
  const working = items.filter((i) => ["waiting", "uploading", ...ACTIVE].includes(i.status)).length;
  if (working) parts.push(`${working} in progress`);
  if (count("failed")) parts.push(`${count("failed")} failed`);
  if (count("rejected")) parts.push(`${count("rejected")} rejected`);
  $("run-summary").textContent = parts.length ? parts.join(" · ") : "No photos yet.";
  $("download-all").disabled = done === 0;
  $("clear-run").disabled = total === 0 || working > 0;
}

function select(id, focus) {
  const previous = selectedId;
  selectedId = id;
  for (const item of items) {
    if (item.id === previous || item.id === id) renderItem(item);
  }
  renderViewer();
  if (focus) $("viewer-title").focus();
}

function renderViewer() {
  const item = items.find((i) => i.id === selectedId);
  const ready = item && item.status === "succeeded";
  const empty = $("viewer-empty");
  empty.hidden = Boolean(ready);
  $("viewer-body").hidden = !ready;
  $("viewer-name").textContent = item ? item.name : "";
  if (!ready) {
    empty.textContent = !item
      ? "Select a photo by its name to compare the result with the original."
      : ["failed", "rejected", "canceled"].includes(item.status)
        ? `${item.name} has no result: ${item.error || item.status}.`
        : `${item.name} is not finished yet; it appears here when it is.`;
    return;
  }
  const before = $("before-img");
  const after = $("after-img");
  if (before.getAttribute("src") !== item.originalUrl) before.src = item.originalUrl;
  if (after.getAttribute("src") !== item.resultUrl) after.src = item.resultUrl;
  $("compare").classList.toggle("transparent", item.options.background === "transparent");
  const download = $("viewer-download");
  download.href = item.resultUrl;
  download.download = item.resultName;
  download.setAttribute("aria-label", `Download ${item.resultName}`);

  // The structure overlay is a side output of the retrieval pipelines; shown only when the
  // job lists one.
  const overlayLink = item.sideOutputs && item.sideOutputs.overlay;
  const toggle = $("overlay-toggle");
  toggle.hidden = !overlayLink;
  if ((toggle.dataset.link || "") !== (overlayLink || "")) {
    // Another photo (or none): its overlay is not the one shown.
    $("overlay-img").hidden = true;
    toggle.setAttribute("aria-pressed", "false");
    toggle.textContent = "Show structure overlay";
  }
  toggle.dataset.link = overlayLink || "";

  const compliance = $("viewer-compliance");
  const check = item.compliance;
  compliance.hidden = !check;
  if (check) {
    compliance.dataset.passed = String(check.passed);
    const failed = check.checks.filter((c) => !c.passed)
      .map((c) => `${c.name.replace(/_/g, " ")} ${JSON.stringify(c.value)} (needs ${JSON.stringify(c.required)})`);
    compliance.textContent = check.passed
      ? `Meets the ${check.preset} preset.`
      : `Fails the ${check.preset} preset: ${failed.join("; ")}.`;
  }

  const timings = $("viewer-timings");
  timings.replaceChildren();
  const total = Object.values(item.timings).reduce((a, b) => a + b, 0);
  for (const [stage, seconds] of Object.entries(item.timings)) {
    const dt = document.createElement("dt");
    dt.textContent = stage;
    const dd = document.createElement("dd");
    dd.textContent = `${(seconds * 1000).toFixed(0)} ms`;
    timings.append(dt, dd);
  }
  if (total) {
    const dt = document.createElement("dt");
    dt.textContent = "total";
    dt.className = "total";
    const dd = document.createElement("dd");
    dd.className = "total";
    dd.textContent = `${(total * 1000).toFixed(0)} ms`;
    timings.append(dt, dd);
  }
}

async function toggleOverlay() {
  const toggle = $("overlay-toggle");
  const img = $("overlay-img");
  const showing = toggle.getAttribute("aria-pressed") === "true";
  if (showing) {
    img.hidden = true;
  } else {
    const response = await api(toggle.dataset.link);
    if (!response.ok) {
      say(`The structure overlay could not be loaded: ${await errorMessage(response)}`);
      return;
    }
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(await response.blob());
    img.hidden = false;
  }
  toggle.setAttribute("aria-pressed", String(!showing));
  toggle.textContent = showing ? "Show structure overlay" : "Hide structure overlay";
}

function setComparePosition(value) {
  const position = Math.max(0, Math.min(100, Number(value)));
  $("compare").style.setProperty("--position", `${position}%`);
  const slider = $("compare-slider");
  slider.value = String(position);
  slider.setAttribute("aria-valuetext", `${Math.round(position)} percent original`);
}

// --- Download all ---------------------------------------------------------------------------

async function downloadAll() {
  const done = items.filter((i) => i.status === "succeeded");
  const used = new Map();
  const files = done.map((item) => {
    let name = item.resultName;
    const n = used.get(name) || 0;
    used.set(name, n + 1);
    if (n) name = name.replace(/(\.[^.]+)$/, `-${n + 1}$1`);
    return { name, blob: item.resultBlob };
  });
  const zip = await writeZip(files);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(zip);
  link.download = `flatlay-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}.zip`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
}

function clearRun() {
  for (const item of items) {
    URL.revokeObjectURL(item.originalUrl);
    if (item.resultUrl) URL.revokeObjectURL(item.resultUrl);
  }
  items.length = 0;
  rows.clear();
  $("run-rows").replaceChildren();
  $("run-empty").hidden = false;
  selectedId = null;
  renderViewer();
  renderSummary();
  $("messages").replaceChildren();
}

// --- Wiring ---------------------------------------------------------------------------------

function wire() {
  const dropzone = $("dropzone");
  const input = $("file-input");
  dropzone.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = "";
  });
  // Drops anywhere on the page count; the zone lights up while a file is over the page.
  let depth = 0;
  document.addEventListener("dragenter", (e) => {
    if (!e.dataTransfer || ![...e.dataTransfer.types].includes("Files")) return;
    depth++;
    dropzone.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) dropzone.classList.remove("dragging");
  });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    dropzone.classList.remove("dragging");
    if (e.dataTransfer && e.dataTransfer.files.length) addFiles([...e.dataTransfer.files]);
  });

  $("options").addEventListener("change", (e) => {
    if (e.target.id === "preset") applyPreset(e.target.value);
    else checkOptions();
  });
  $("options").addEventListener("submit", (e) => e.preventDefault());
  $("hint").addEventListener("input", checkOptions);
  $("background-colour").addEventListener("input", () => {
    document.querySelector('input[name="background-kind"][value="custom"]').checked = true;
    checkOptions();
  });

  const key = $("api-key");
  key.value = sessionStorage.getItem("flatlay-api-key") || "";
  key.addEventListener("change", () => sessionStorage.setItem("flatlay-api-key", key.value.trim()));

  $("download-all").addEventListener("click", downloadAll);
  $("clear-run").addEventListener("click", clearRun);
  $("overlay-toggle").addEventListener("click", toggleOverlay);

  const slider = $("compare-slider");
  slider.addEventListener("input", () => setComparePosition(slider.value));
  const compare = $("compare");
  const follow = (e) => {
    const box = compare.getBoundingClientRect();
    setComparePosition(((e.clientX - box.left) / box.width) * 100);
  };
  compare.addEventListener("pointerdown", (e) => {
    compare.setPointerCapture(e.pointerId);
    follow(e);
    compare.addEventListener("pointermove", follow);
  });
  compare.addEventListener("pointerup", () => compare.removeEventListener("pointermove", follow));
  setComparePosition(50);
}

wire();
loadPipelines();
loadPresets();
checkService();
setInterval(() => {
  for (const item of items) if (item.status === "uploading" || ACTIVE.has(item.status)) renderItem(item);
}, 1000);
