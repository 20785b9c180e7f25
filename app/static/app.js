// histokg page: slides, overlays, similar slides and regions, pathway query, upload. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { slide: null, meta: null, overlay: null, thumb: null, scale: 1, drag: null, highlight: null };
const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];
const CATEGORICAL = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
  "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94"];

async function api(url, options) {
  const res = await fetch(url, options);
  const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

function status(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function labelText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
}

// ---------------------------------------------------------------- slides
async function loadSlides() {
  const info = await api("/api/info");
  $("index-info").textContent = `${info.n_slides} slides, ${info.n_regions} regions`;
  for (const lab of info.region_labels) $("pathway-within").append(el("option", { value: lab }, lab));
  if (!info.uploads) { $("upload-go").disabled = true; $("upload-text").textContent = info.uploads_reason; }
  const { slides } = await api("/api/slides");
  const list = $("slide-list");
  for (const s of slides) {
    const btn = el("button", { type: "button", dataset: { slideId: s.slide_id }, onclick: () => openSlide(s.slide_id) },
      s.slide_id, el("span", { class: "meta" }, `${s.kind}, ${s.n_regions} regions${labelText(s.labels) ? " - " + labelText(s.labels) : ""}`));
    list.append(el("li", {}, btn));
  }
}

async function openSlide(slideId, highlight) {
  status(`loading ${slideId}...`);
  state.slide = slideId;
  state.highlight = highlight || null;
  for (const b of document.querySelectorAll("#slide-list button")) b.classList.toggle("active", b.dataset.slideId === slideId);
  state.meta = await api(`/api/slides/${encodeURIComponent(slideId)}`);
  $("slide-title").textContent = `${slideId} (${state.meta.kind}, ${state.meta.n_regions} regions${labelText(state.meta.labels) ? "; " + labelText(state.meta.labels) : ""})`;
  state.thumb = await new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("thumbnail failed to load"));
    img.src = `/api/slides/${encodeURIComponent(slideId)}/thumbnail`;
  });
  await Promise.all([loadOverlay(), loadSimilarSlides()]);
  status(`${slideId}: drag or click on the slide to find similar regions`);
}

// ---------------------------------------------------------------- overlay
function currentFeature() {
  const kind = $("feature-kind").value;
  if (kind === "cluster" || kind === "label") return kind;
  const name = $("feature-name").value.trim();
  if (!name) return null;
  return `${kind}:${name}`;
}

async function loadOverlay() {
  if (!state.slide) return;
  const feature = currentFeature();
  if (!feature) { status("type a gene or pathway name"); return; }
  const params = new URLSearchParams({ feature, source: $("feature-source").value });
  try {
    state.overlay = await api(`/api/slides/${encodeURIComponent(state.slide)}/overlay?${params}`);
  } catch (err) {
    state.overlay = null;
    status(err.message, true);
  }
  draw();
  drawScale();
}

function colour(o, i) {
  const v = o.values[i];
  if (v === null || v === undefined) return null;
  if (o.kind === "categorical") return CATEGORICAL[v % CATEGORICAL.length];
  const t = Math.min(1, Math.max(0, (v - o.vmin) / (o.vmax - o.vmin)));
  return VIRIDIS[Math.min(VIRIDIS.length - 1, Math.floor(t * VIRIDIS.length))];
}

function draw() {
  const canvas = $("slide-canvas");
  const ctx = canvas.getContext("2d");
  const img = state.thumb;
  if (!img) return;
  const maxW = 720, maxH = 560;
  const fit = Math.min(maxW / img.width, maxH / img.height);
  canvas.width = Math.round(img.width * fit);
  canvas.height = Math.round(img.height * fit);
  state.scale = (state.meta.thumbnail_scale || 1) * fit; // display px per level-0 px
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  const o = state.overlay;
  if (o) {
    const r = Math.max(2, (state.meta.region_diameter_px || 50) * state.scale / 2);
    ctx.globalAlpha = 0.7;
    for (let i = 0; i < o.x.length; i++) {
      const c = colour(o, i);
      if (!c) continue;
      ctx.fillStyle = c;
      const x = o.x[i] * state.scale, y = o.y[i] * state.scale;
      if (state.meta.kind === "tiles") ctx.fillRect(x - r, y - r, 2 * r, 2 * r);
      else { ctx.beginPath(); ctx.arc(x, y, r * 0.5, 0, 2 * Math.PI); ctx.fill(); }
    }
    ctx.globalAlpha = 1;
  }
  const box = state.drag || state.highlight;
  if (box) {
    ctx.strokeStyle = "#ff00aa";
    ctx.lineWidth = 2;
    ctx.strokeRect(box.x0 * state.scale, box.y0 * state.scale, (box.x1 - box.x0) * state.scale, (box.y1 - box.y0) * state.scale);
  }
}

function drawScale() {
  const o = state.overlay, bar = $("colorbar"), ticks = $("colorbar-ticks"), legend = $("legend");
  legend.textContent = ""; ticks.textContent = "";
  bar.hidden = true;
  if (!o) return;
  if (o.kind === "categorical") {
    o.categories.forEach((c, i) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = CATEGORICAL[i % CATEGORICAL.length]; // CSSOM, not a style attribute: allowed by the CSP
      legend.append(swatch, c);
    });
    return;
  }
  bar.hidden = false;
  const ctx = bar.getContext("2d");
  for (let x = 0; x < bar.width; x++) {
    ctx.fillStyle = VIRIDIS[Math.min(VIRIDIS.length - 1, Math.floor((x / bar.width) * VIRIDIS.length))];
    ctx.fillRect(x, 0, 1, bar.height);
  }
  const mid = (o.vmin + o.vmax) / 2;
  for (const v of [o.vmin, mid, o.vmax]) ticks.append(el("span", {}, v.toPrecision(3)));
  legend.append(`${o.label} - ${o.source} (one scale for measured and predicted)`);
}

// ---------------------------------------------------------------- similar slides and regions
async function loadSimilarSlides() {
  const list = $("similar-slides");
  list.textContent = "";
  const params = new URLSearchParams({ k: 5, descriptor: $("descriptor").value });
  try {
    const res = await api(`/api/slides/${encodeURIComponent(state.slide)}/similar?${params}`);
    for (const r of res.results) {
      list.append(el("li", { dataset: { slideId: r.slide_id }, onclick: () => openSlide(r.slide_id) },
        el("img", { src: r.thumbnail_url, alt: r.slide_id }),
        el("div", {}, el("div", {}, r.slide_id), el("div", { class: "score" }, `score ${r.score.toFixed(3)}`),
          el("div", { class: "muted" }, labelText(r.labels)))));
    }
  } catch (err) { status(err.message, true); }
}

function toLevel0(ev) {
  const rect = $("slide-canvas").getBoundingClientRect();
  return { x: (ev.clientX - rect.left) / state.scale, y: (ev.clientY - rect.top) / state.scale };
}

function setupCanvas() {
  const canvas = $("slide-canvas");
  let start = null;
  canvas.addEventListener("mousedown", (ev) => { if (state.slide) start = toLevel0(ev); });
  canvas.addEventListener("mousemove", (ev) => {
    if (!start) return;
    const p = toLevel0(ev);
    state.drag = { x0: Math.min(start.x, p.x), y0: Math.min(start.y, p.y), x1: Math.max(start.x, p.x), y1: Math.max(start.y, p.y) };
    draw();
  });
  canvas.addEventListener("mouseup", (ev) => {
    if (!start) return;
    const p = toLevel0(ev);
    let box = { x0: Math.min(start.x, p.x), y0: Math.min(start.y, p.y), x1: Math.max(start.x, p.x), y1: Math.max(start.y, p.y) };
    const half = (state.meta.region_diameter_px || 50) / 2;
    if (box.x1 - box.x0 < 2 * half / 4 && box.y1 - box.y0 < 2 * half / 4) {  // a click: one region's square
      box = { x0: p.x - half, y0: p.y - half, x1: p.x + half, y1: p.y + half };
    }
    start = null;
    state.drag = null;
    state.highlight = box;
    draw();
    similarRegions(box);
  });
}

async function similarRegions(box) {
  const list = $("similar-regions");
  list.textContent = "";
  const params = new URLSearchParams({ x0: box.x0.toFixed(1), y0: box.y0.toFixed(1), x1: box.x1.toFixed(1), y1: box.y1.toFixed(1), units: "px", k: 8 });
  try {
    const res = await api(`/api/slides/${encodeURIComponent(state.slide)}/regions/similar?${params}`);
    status(`${res.query.regions.length} region(s) selected on ${state.slide}; ${res.results.length} similar regions`);
    for (const r of res.results) {
      const half = r.diameter_px / 2;
      list.append(el("li", { dataset: { slideId: r.slide_id, regionId: r.region_id },
        onclick: () => openSlide(r.slide_id, { x0: r.x - half, y0: r.y - half, x1: r.x + half, y1: r.y + half }) },
        el("img", { src: r.thumbnail_url, alt: `region on ${r.slide_id}` }),
        el("div", {}, el("div", {}, `${r.slide_id} @ (${Math.round(r.x)}, ${Math.round(r.y)})`),
          el("div", { class: "score" }, `score ${r.score.toFixed(3)}`),
          el("div", { class: "muted" }, r.label ? `label: ${r.label}` : ""))));
    }
  } catch (err) { status(err.message, true); }
}

// ---------------------------------------------------------------- pathways
let completeTimer = null;
function complete(input, datalist, kind) {
  clearTimeout(completeTimer);
  completeTimer = setTimeout(async () => {
    const text = input.value.trim();
    let items = [];
    if (kind === "gene") {
      items = (state.meta ? state.meta.genes : []).filter((g) => g.toLowerCase().startsWith(text.toLowerCase())).slice(0, 20).map((g) => ({ id: g, label: g }));
    } else {
      try { items = (await api(`/api/pathways?${new URLSearchParams({ q: text, limit: 15 })}`)).results; } catch (err) { items = []; }
    }
    datalist.textContent = "";
    for (const it of items) datalist.append(el("option", { value: it.id }, it.label));
  }, 150);
}

async function pathwayQuery(ev) {
  ev.preventDefault();
  const list = $("pathway-results");
  list.textContent = "";
  const name = $("pathway-input").value.trim();
  if (!name) return;
  const params = new URLSearchParams({ name, k: 10 });
  if ($("pathway-within").value) params.set("within", $("pathway-within").value);
  try {
    const res = await api(`/api/pathways/slides?${params}`);
    list.append(el("li", { class: "muted" }, `${res.label}${res.within ? " in " + res.within : ""}`));
    for (const r of res.results) {
      list.append(el("li", { dataset: { slideId: r.slide_id }, onclick: () => { openSlide(r.slide_id); $("feature-kind").value = "kg"; $("feature-name").hidden = false; $("feature-name").value = res.entity; } },
        el("img", { src: r.thumbnail_url, alt: r.slide_id }),
        el("div", {}, el("div", {}, r.slide_id), el("div", { class: "score" }, `mean activation ${r.score.toFixed(3)}`),
          el("div", { class: "muted" }, `${r.source}, ${r.n_regions} regions`))));
    }
  } catch (err) { list.append(el("li", { class: "error" }, err.message)); }
}

// ---------------------------------------------------------------- upload
async function upload(ev) {
  ev.preventDefault();
  const file = $("upload-file").files[0];
  const text = $("upload-text"), bar = $("upload-progress");
  if (!file) { text.textContent = "choose a file first"; return; }
  const form = new FormData();
  form.append("file", file);
  if ($("upload-mpp").value) form.append("mpp", $("upload-mpp").value);
  text.className = "muted";
  text.textContent = "uploading...";
  bar.hidden = false; bar.value = 0;
  try {
    const job = await api("/api/uploads", { method: "POST", body: form });
    let st = job;
    while (st.status !== "done" && st.status !== "error") {
      await new Promise((r) => setTimeout(r, 500));
      st = await api(job.status_url);
      bar.value = st.progress;
      text.textContent = `${st.status} ${Math.round(st.progress * 100)}%${st.n_tiles ? ` of ${st.n_tiles} tiles` : ""}`;
    }
    if (st.status === "error") throw new Error(st.message);
    text.textContent = `${st.message}; most similar slides:`;
    const list = $("upload-results");
    list.textContent = "";
    for (const r of st.results.prototypes) {
      list.append(el("li", { onclick: () => openSlide(r.slide_id) }, el("img", { src: r.thumbnail_url, alt: r.slide_id }),
        el("div", {}, el("div", {}, r.slide_id), el("div", { class: "score" }, `score ${r.score.toFixed(3)}`))));
    }
  } catch (err) { text.textContent = err.message; text.className = "error"; }
}

// ---------------------------------------------------------------- wiring
$("feature-kind").addEventListener("change", () => {
  const kind = $("feature-kind").value;
  $("feature-name").hidden = kind === "cluster" || kind === "label";
  $("feature-name").value = "";
  if (!$("feature-name").hidden) { $("feature-name").focus(); complete($("feature-name"), $("feature-options"), kind); }
  else loadOverlay();
});
$("feature-name").addEventListener("input", () => complete($("feature-name"), $("feature-options"), $("feature-kind").value));
$("feature-name").addEventListener("change", loadOverlay);
$("feature-source").addEventListener("change", loadOverlay);
$("descriptor").addEventListener("change", () => state.slide && loadSimilarSlides());
$("pathway-input").addEventListener("input", () => complete($("pathway-input"), $("pathway-options"), "kg"));
$("pathway-form").addEventListener("submit", pathwayQuery);
$("upload-form").addEventListener("submit", upload);
setupCanvas();
loadSlides().catch((err) => status(err.message, true));
