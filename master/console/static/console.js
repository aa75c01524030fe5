// The console's behaviour: live updates over Server-Sent Events, actions through the JSON API (session cookie +
// XSRF token), local times, and resumable (tus 1.0.0) uploads. Plain JS, no library, no inline script (CSP).
"use strict";

const XSRF = document.querySelector('meta[name="xsrf-token"]')?.content || "";
const TUS_CHUNK = 8 * 1024 * 1024;

function notice(text, isError) {
  const box = document.getElementById("notice");
  if (!box) return;
  box.textContent = text;
  box.classList.toggle("error", Boolean(isError));
  box.classList.add("shown");
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => box.classList.remove("shown"), 6000);
}

function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const date = new Date(el.getAttribute("datetime"));
    if (!isNaN(date)) {
      el.textContent = date.toLocaleString();
      el.title = el.getAttribute("datetime");
    }
  }
}

function duration(seconds) {
  if (seconds == null || seconds < 0) return "";
  seconds = Math.round(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  if (h) return `${h}h${String(m).padStart(2, "0")}m`;
  return m ? `${m}m${String(s).padStart(2, "0")}s` : `${s}s`;
}

async function api(method, url, body) {
  const headers = {"X-XSRFToken": XSRF};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {method, headers, credentials: "same-origin",
                                     body: body === undefined ? undefined : JSON.stringify(body)});
  if (response.status === 401) {
    location.assign("/console/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new Error("signed out");
  }
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) throw new Error((data && (data.message || data.error)) || `HTTP ${response.status}`);
  return data;
}

// -- the live part of a page ------------------------------------------------------------------------------
let refreshing = null, refreshAgain = false;

async function refreshLive() {
  const live = document.querySelector("[data-live]");
  if (!live) return;
  if (refreshing) { refreshAgain = true; return; }
  const url = new URL(location.href);
  url.searchParams.set("part", "1");
  refreshing = fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}});
  try {
    const response = await refreshing;
    if (response.status === 401) { location.reload(); return; }
    if (!response.ok) return;
    const focused = document.activeElement && live.contains(document.activeElement)
      ? focusKey(document.activeElement) : null;
    live.innerHTML = await response.text();  // HTML the server rendered, every value escaped there
    localTimes(live);
    if (focused) live.querySelector(focused)?.focus();
  } catch (e) {
    // the next event tries again
  } finally {
    refreshing = null;
    if (refreshAgain) { refreshAgain = false; setTimeout(refreshLive, 250); }
  }
}

function focusKey(el) {
  for (const name of ["data-post", "data-patch", "href"]) {
    const value = el.getAttribute(name);
    if (value) return `[${name}="${CSS.escape(value)}"]`;
  }
  return null;
}

// -- actions --------------------------------------------------------------------------------------------
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-post], button[data-patch]");
  if (!button) return;
  const question = button.getAttribute("data-confirm");
  if (question && !window.confirm(question)) return;
  button.disabled = true;
  try {
    if (button.hasAttribute("data-post")) {
      const data = await api("POST", button.getAttribute("data-post"));
      if (data && data.retried !== undefined) notice(`${data.retried} job(s) retried, ${data.skipped} left failed`);
      else notice(data && data.status ? `${data.id || data.job_id || ""} ${data.status}`.trim() : "done");
    } else {
      await api("PATCH", button.getAttribute("data-patch"), {priority: Number(button.getAttribute("data-priority"))});
      notice("priority changed");
    }
  } catch (e) {
    notice(e.message, true);
  } finally {
    button.disabled = false;
    refreshLive();
  }
});

// -- server push ------------------------------------------------------------------------------------------
let lastKey = null, delay = 1000;

function setLiveState(text, ok) {
  const el = document.getElementById("live-state");
  if (!el) return;
  el.textContent = text;
  el.classList.toggle("down", !ok);
}

function connect() {
  const source = new EventSource("/console/events");
  source.addEventListener("open", () => { delay = 1000; setLiveState("live", true); });
  source.addEventListener("state", (event) => onState(JSON.parse(event.data)));
  source.addEventListener("error", () => {
    source.close();
    setLiveState(`reconnecting in ${Math.round(delay / 1000)} s`, false);
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 30000);
  });
}

function onState(state) {
  if (!state.counts) { setLiveState("database unavailable", false); return; }
  for (const [status, count] of Object.entries(state.counts)) {
    for (const el of document.querySelectorAll(`[data-count="${CSS.escape(status)}"]`)) el.textContent = count;
  }
  const key = JSON.stringify([state.counts, state.paused, state.running.map((job) => [job.id, job.worker])]);
  if (lastKey !== null && key !== lastKey) refreshLive();
  lastKey = key;
  for (const job of state.running) {
    for (const row of document.querySelectorAll(`[data-job="${CSS.escape(job.id)}"]`)) {
      const bar = row.querySelector("progress");
      if (bar) { bar.value = job.progress; bar.textContent = `${Math.round(job.progress)}%`; }
      const set = (selector, text) => { const el = row.querySelector(selector); if (el) el.textContent = text; };
      set(".pct", `${Math.round(job.progress)}%`);
      set(".speed", job.speed ? `${job.speed.toFixed(2)}×` : job.rate ? `${job.rate} %/min` : "");
      set(".eta", job.eta != null ? `ETA ${duration(job.eta)}` : "");
    }
  }
}

// -- submitting -------------------------------------------------------------------------------------------
function base64(text) {
  return btoa(Array.from(new TextEncoder().encode(text), (b) => String.fromCharCode(b)).join(""));
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

class TusUpload {
  constructor(file, metadata, onProgress) {
    this.file = file;
    this.metadata = metadata;
    this.onProgress = onProgress;
    this.key = "converter-tus:" + JSON.stringify([file.name, file.size, file.lastModified, metadata]);
    this.xhr = null;
    this.stopped = false;
  }

  async start() {
    let saved = null;
    try { saved = JSON.parse(localStorage.getItem(this.key) || "null"); } catch (e) { saved = null; }
    let offset = saved ? await this.offsetOf(saved.url) : null;
    if (offset === null) {
      saved = await this.create();
      offset = 0;
    }
    localStorage.setItem(this.key, JSON.stringify(saved));
    let failures = 0;
    while (offset < this.file.size) {
      if (this.stopped) throw new Error("paused");
      try {
        offset = await this.patch(saved.url, offset);
        failures = 0;
      } catch (e) {
        if (this.stopped || e.fatal) throw e;
        failures += 1;
        if (failures > 8) throw e;
        await sleep(Math.min(500 * 2 ** failures, 15000));  // a dropped connection: ask where to go on, then resume
        const at = await this.offsetOf(saved.url);
        if (at === null) throw new Error("the upload is gone from the master (expired?)");
        offset = at;
      }
    }
    localStorage.removeItem(this.key);
    return saved.job;
  }

  async offsetOf(url) {
    try {
      const response = await fetch(url, {method: "HEAD", headers: {"Tus-Resumable": "1.0.0"},
                                          credentials: "same-origin"});
      return response.ok ? Number(response.headers.get("Upload-Offset")) : null;
    } catch (e) {
      return null;
    }
  }

  async create() {
    const pairs = Object.entries({...this.metadata, filename: this.file.name})
      .filter(([, value]) => value !== "" && value != null)
      .map(([name, value]) => `${name} ${base64(String(value))}`);
    const response = await fetch("/api/uploads", {method: "POST", credentials: "same-origin", headers: {
      "Tus-Resumable": "1.0.0", "Upload-Length": String(this.file.size), "Upload-Metadata": pairs.join(","),
      "X-XSRFToken": XSRF}});
    if (response.status !== 201) {
      let message = `HTTP ${response.status}`;
      try { message = (await response.json()).message || message; } catch (e) { /* keep the status */ }
      const error = new Error(message);
      error.fatal = true;
      throw error;
    }
    return {url: response.headers.get("Location"), job: response.headers.get("Converter-Job-Id")};
  }

  patch(url, offset) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      this.xhr = xhr;
      xhr.open("PATCH", url);
      xhr.setRequestHeader("Tus-Resumable", "1.0.0");
      xhr.setRequestHeader("Upload-Offset", String(offset));
      xhr.setRequestHeader("Content-Type", "application/offset+octet-stream");
      xhr.setRequestHeader("X-XSRFToken", XSRF);
      xhr.upload.addEventListener("progress", (e) => this.onProgress(offset + e.loaded, this.file.size));
      xhr.addEventListener("load", () => {
        if (xhr.status === 204) {
          const at = Number(xhr.getResponseHeader("Upload-Offset"));
          this.onProgress(at, this.file.size);
          resolve(at);
          return;
        }
        let message = `HTTP ${xhr.status}`;
        try { message = JSON.parse(xhr.responseText).message || message; } catch (e) { /* keep the status */ }
        const error = new Error(message);
        error.fatal = xhr.status >= 400 && xhr.status < 500 && xhr.status !== 409 && xhr.status !== 423;
        reject(error);
      });
      xhr.addEventListener("error", () => reject(new Error("connection lost")));
      xhr.addEventListener("abort", () => reject(new Error("paused")));
      xhr.send(this.file.slice(offset, Math.min(offset + TUS_CHUNK, this.file.size)));
    });
  }

  stop() {
    this.stopped = true;
    if (this.xhr) this.xhr.abort();
  }
}

function jobLink(jobId) {
  const link = document.createElement("a");
  link.href = "/console/jobs/" + encodeURIComponent(jobId);
  link.textContent = jobId;
  return link;
}

function setupUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const bar = document.getElementById("upload-progress"), text = document.getElementById("upload-text");
  const pause = document.getElementById("upload-pause");
  let upload = null;
  pause.addEventListener("click", () => { if (upload) upload.stop(); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = form.elements.file.files[0];
    if (!file) return;
    const metadata = {profile: form.elements.profile.value, output_path: form.elements.output_path.value.trim(),
                      priority: form.elements.priority.value.trim()};
    document.getElementById("upload-status").hidden = false;
    pause.hidden = false;
    form.querySelector('button[type="submit"]').disabled = true;
    upload = new TusUpload(file, metadata, (sent, total) => {
      const percent = total ? Math.floor((sent / total) * 100) : 100;
      bar.value = percent;
      bar.textContent = `${percent}%`;
      text.textContent = `${percent}% (${(sent / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB)`;
    });
    try {
      const jobId = await upload.start();
      bar.value = 100;
      text.textContent = "Uploaded: job ";
      text.append(jobLink(jobId), " is queued.");
    } catch (e) {
      text.textContent = e.message === "paused" ? "Paused: submit the same file again to resume."
        : `Failed: ${e.message}`;
    } finally {
      pause.hidden = true;
      form.querySelector('button[type="submit"]').disabled = false;
      upload = null;
    }
  });
}

function setupStored() {
  const form = document.getElementById("stored-form");
  if (!form) return;
  const status = document.getElementById("stored-status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {source_path: form.elements.source_path.value.trim(),
                  output_path: form.elements.output_path.value.trim(), profile: form.elements.profile.value};
    if (form.elements.priority.value.trim()) body.priority = Number(form.elements.priority.value);
    try {
      const job = await api("POST", "/api/jobs", body);
      status.textContent = "Submitted: job ";
      status.append(jobLink(job.id), ".");
    } catch (e) {
      status.textContent = `Refused: ${e.message}`;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  setupUpload();
  setupStored();
  if (document.getElementById("live-state")) connect();
});
