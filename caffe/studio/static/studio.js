/* neocaffe studio: the few helpers the pages share (no framework, no build step).
 *   followJob(id, onEvent)           follow a job's events (server-sent events); returns the EventSource
 *   studio.Chart(el, options)        a live line chart over Plotly (load /static/plotly.min.js first)
 *   studio.tabs / refreshStatuses / followLog / setStatus / num / duration / fetchJSON
 *   studio.csrfHeaders(headers)      headers plus the page's CSRF token (every POST/PUT/DELETE needs it)
 *   studio.folderPickers()           a folder picker for each <input data-folder-picker> (server folders)
 */
"use strict";

const ACTIVE = new Set(["Waiting", "Running"]);

/* Calls onEvent(event) for each event of the job: the events.jsonl lines replayed then followed
 * ({event: "start"|"train"|"test"|"snapshot"|"done"|"progress", ...}), status changes
 * ({event: "status", status}) and, last, {event: "end", status}. NaN arrives as the string "NaN". */
function followJob(id, onEvent) {
  const source = new EventSource(`/jobs/${encodeURIComponent(id)}/events`);
  source.onmessage = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    if (event.event === "end") source.close();  // else the browser would reconnect and replay
    onEvent(event);
  };
  return source;
}

const studio = {
  ACTIVE,
  followJob,

  /* A number from an event field ("NaN"/"Infinity" strings included). */
  num(v) { return v === null || v === undefined ? NaN : Number(v); },

  /* "1h 02m", "3m 05s", "12s". */
  duration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "";
    const s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const pad = (x) => String(x).padStart(2, "0");
    return h ? `${h}h ${pad(m)}m` : m ? `${m}m ${pad(r)}s` : `${r}s`;
  },

  /* The page's CSRF token (from <meta name="csrf-token">) added to `headers`. */
  csrfHeaders(headers = {}) {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? {...headers, "X-CSRF-Token": meta.content} : headers;
  },

  async fetchJSON(url, options = {}) {
    const headers = studio.csrfHeaders({Accept: "application/json", ...(options.headers || {})});
    const response = await fetch(url, {...options, headers});
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((body.errors || [body.detail || response.statusText]).join("; "));
    return body;
  },

  setStatus(badge, status) {
    if (!badge) return;
    badge.textContent = status;
    badge.className = badge.className.replace(/\bstatus-\S+/g, "").trim() + " status-" + status.toLowerCase();
  },

  /* Tabs made of links to #panel ids: shows one panel, keeps the choice in the URL hash. */
  tabs(bar, fallback) {
    if (!bar) return;
    const tabs = [...bar.querySelectorAll("[data-panel]")];
    const show = (name) => {
      if (!tabs.some((t) => t.dataset.panel === name)) name = fallback;
      for (const t of tabs) {
        const on = t.dataset.panel === name;
        t.classList.toggle("active", on);
        t.setAttribute("aria-selected", on);
        document.getElementById(t.dataset.panel).hidden = !on;
      }
    };
    window.addEventListener("hashchange", () => show(location.hash.slice(1)));
    show(location.hash.slice(1));
  },

  /* Home page: while some job is waiting or running, refresh the status badges from /index.json. */
  refreshStatuses(period = 3000) {
    const rows = () => [...document.querySelectorAll("tr[data-job-id]")];
    const tick = async () => {
      if (!rows().some((r) => ACTIVE.has(r.dataset.status))) return;
      try {
        const index = await studio.fetchJSON("/index.json");
        const all = [...index.datasets, ...index.models, ...index.pretrained_models];
        for (const job of all) {
          const row = document.querySelector(`tr[data-job-id="${job.id}"]`);
          if (row && row.dataset.status !== job.status) {
            row.dataset.status = job.status;
            studio.setStatus(row.querySelector(".badge"), job.status);
            const hardware = row.querySelector(".hardware-cell");
            if (hardware) hardware.textContent = job.hardware;
          }
          const progress = row && row.querySelector(".progress-cell");
          if (progress && job.progress) progress.textContent = job.progress.text;
        }
        const free = document.getElementById("gpu-free");
        if (free && index.gpus) free.textContent = index.gpus.free.length;
      } catch (e) { /* the server restarts: try again */ }
      setTimeout(tick, period);
    };
    setTimeout(tick, period);
  },

  /* Appends what a job's log.txt gains to `pre` until the job ends. */
  followLog(id, pre, badge, period = 2000) {
    let offset = 0;
    const tick = async () => {
      let status = "Running";
      try {
        const response = await fetch(`/jobs/${encodeURIComponent(id)}/log.txt?offset=${offset}`);
        const text = await response.text();
        const atBottom = offset === 0 || pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        if (offset === 0) pre.textContent = text; else pre.textContent += text;
        if (atBottom) pre.scrollTop = pre.scrollHeight;
        offset = Number(response.headers.get("X-Log-Offset") || offset);
        status = response.headers.get("X-Job-Status") || status;
        studio.setStatus(badge, status);
      } catch (e) { /* try again */ }
      if (ACTIVE.has(status)) setTimeout(tick, period);
    };
    tick();
  },
};

/* A line chart updated as events come:
 *   const chart = new studio.Chart("loss-chart", {title: "Loss", xTitle: "Epoch", yTitle: "loss",
 *                                                 y2Title: "accuracy (%)"});
 *   chart.add("loss (train)", x, y);                  // creates the series on first use
 *   chart.add("accuracy (val)", x, y, {axis: "y2"});  // right-hand axis
 *   chart.set("lr", xs, ys);                           // replace a whole series
 * Points are batched and drawn once per animation frame. */
studio.Chart = class {
  constructor(el, options = {}) {
    this.el = typeof el === "string" ? document.getElementById(el) : el;
    this.index = new Map();
    this.pending = new Map();
    this.scheduled = false;
    const layout = {
      title: options.title ? {text: options.title} : undefined,
      margin: {t: options.title ? 40 : 10, r: options.y2Title ? 60 : 20, b: 45, l: 60},
      xaxis: {title: {text: options.xTitle || ""}, zeroline: false},
      yaxis: {title: {text: options.yTitle || ""}, type: options.yType || "linear", rangemode: "tozero"},
      legend: {orientation: "h", y: -0.2},
      hovermode: "x unified",
      height: options.height || 340,
    };
    if (options.y2Title) {
      layout.yaxis2 = {title: {text: options.y2Title}, overlaying: "y", side: "right", rangemode: "tozero",
                       range: options.y2Range};
    }
    Plotly.newPlot(this.el, [], layout, {responsive: true, displaylogo: false});
  }

  series(name, options = {}) {
    if (!this.index.has(name)) {
      const trace = {x: [], y: [], name, mode: options.mode || "lines", type: "scatter",
                     yaxis: options.axis === "y2" ? "y2" : "y"};
      if (options.dash) trace.line = {dash: options.dash};
      Plotly.addTraces(this.el, trace);
      this.index.set(name, this.index.size);
    }
    return this.index.get(name);
  }

  add(name, x, y, options = {}) {
    const i = this.series(name, options);
    if (!this.pending.has(i)) this.pending.set(i, {x: [], y: []});
    const p = this.pending.get(i);
    p.x.push(x);
    p.y.push(studio.num(y));
    if (!this.scheduled) {
      this.scheduled = true;
      requestAnimationFrame(() => this.flush());
    }
  }

  set(name, xs, ys, options = {}) {
    const i = this.series(name, options);
    this.pending.delete(i);
    Plotly.restyle(this.el, {x: [xs], y: [ys.map(studio.num)]}, [i]);
  }

  flush() {
    this.scheduled = false;
    if (!this.pending.size) return;
    const indices = [...this.pending.keys()];
    const update = {x: indices.map((i) => this.pending.get(i).x), y: indices.map((i) => this.pending.get(i).y)};
    this.pending.clear();
    Plotly.extendTraces(this.el, update, indices);
  }
};

/* A "Browse…" button after each <input data-folder-picker>: the server folders inside the data roots
 * (GET /folders.json), one level at a time; "Use" puts the folder into the input. */
studio.folderPickers = function folderPickers() {
  for (const input of document.querySelectorAll("input[data-folder-picker]")) {
    const button = document.createElement("button");
    Object.assign(button, {type: "button", className: "btn", textContent: "Browse…", id: `${input.id}-browse`});
    const box = document.createElement("div");
    Object.assign(box, {className: "folder-picker", hidden: true, id: `${input.id}-picker`});
    input.after(button, box);
    const entry = (label, onClick) => {
      const b = document.createElement("button");
      Object.assign(b, {type: "button", className: "link", textContent: label});
      b.addEventListener("click", onClick);
      box.append(b, document.createElement("br"));
    };
    const show = async (path) => {
      let r;
      try { r = await studio.fetchJSON(`/folders.json?path=${encodeURIComponent(path || "")}`); }
      catch (e) { if (path) return show(""); box.textContent = e.message; box.hidden = false; return; }
      box.replaceChildren();
      if (r.path) {
        entry(`Use ${r.path}`, () => {
          input.value = r.path;
          box.hidden = true;
          input.dispatchEvent(new Event("change", {bubbles: true}));
        });
        entry("⬑ up", () => show(r.parent || ""));
      }
      for (const f of r.folders) entry(`${f.name}/`, () => show(f.path));
      if (!r.folders.length) box.append(r.path ? "(no sub-folders)" : "(no data roots)");
      if (r.truncated) box.append(" … more not shown");
      box.hidden = false;
    };
    button.addEventListener("click", () => { if (box.hidden) show(input.value); else box.hidden = true; });
  }
};

window.followJob = followJob;
window.studio = studio;
