// histokg page: slides (indexed, and predicted from H&E), overlays with a legend, a scale bar and
// positions in µm, similar slides and regions, pathway query, upload. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { slide: null, meta: null, overlay: null, thumb: null, scale: 1, drag: null, highlight: null, info: null, opacity: 0.6, mark: null };
const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];
const SCALE_STEPS_UM = [10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000];
const SOURCE_TEXT = {
  auto: "measured where available", measured: "measured", predicted: "predicted",
  uncertainty: "uncertainty (interval half-width)",
};

async function api(url, options) {
  const res = await fetch(url, options);
  const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

function status(text) {
  $("status").textContent = text;
}

// One error at a time, under the slide; every action clears it when it starts, so that an error never
// stays on screen under the answer of a later, valid request.
function showError(text) {
  const box = $("error");
  box.textContent = text || "";
  box.hidden = !text;
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

const NUMBER = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

function um(value) { return `${NUMBER.format(value)} µm`; }

// "S2, x 2,190 µm, y 695 µm" from level-0 pixels (pixels when the slide's MPP is unknown)
function positionText(slideId, x, y, mpp) {
  if (mpp) return `${slideId}, x ${um(x * mpp)}, y ${um(y * mpp)}`;
  return `${slideId}, x ${NUMBER.format(x)} px, y ${NUMBER.format(y)} px (no µm: the slide's MPP is unknown)`;
}

function fmt(v) {
  if (v === null || v === undefined) return "n/a";
  const a = Math.abs(v);
  return a !== 0 && (a < 0.01 || a >= 1e4) ? v.toExponential(2) : v.toPrecision(3);
}

function ordinal(n) {
  const k = Math.round(n), tail = k % 100;
  const suffix = tail >= 11 && tail <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[k % 10] || "th");
  return `${k}${suffix}`;
}

function isPredicted() { return state.meta && state.meta.origin === "predicted"; }

// ---------------------------------------------------------------- slides
async function loadSlides() {
  const info = await api("/api/info");
  state.info = info;
  $("index-info").textContent = `${info.n_slides} indexed, ${info.n_regions} regions${info.n_predicted ? `; ${info.n_predicted} predicted` : ""}`;
  for (const lab of info.region_labels) $("pathway-within").append(el("option", { value: lab }, lab));
  if (!info.uploads) { $("upload-go").disabled = true; $("upload-text").textContent = info.uploads_reason; }
  describeDescriptor();
  const { slides } = await api("/api/slides");
  for (const s of slides) {
    const predicted = s.origin === "predicted";
    const detail = predicted
      ? `predicted from H&E, ${s.n_regions} ${s.kind}`
      : `${s.kind}, ${s.n_regions} regions${s.has_expr ? ", measured" : ""}${labelText(s.labels) ? " - " + labelText(s.labels) : ""}`;
    const btn = el("button", { type: "button", dataset: { slideId: s.slide_id }, onclick: () => openSlide(s.slide_id) },
      s.name || s.slide_id, el("span", { class: "meta" }, detail));
    $(predicted ? "predicted-list" : "slide-list").append(el("li", {}, btn));
    if (predicted) { $("predicted-heading").hidden = false; $("predicted-note").hidden = false; }
  }
}

function describeDescriptor() {
  const name = $("descriptor").value;
  const summary = state.info && state.info.descriptors ? state.info.descriptors[name] : "";
  $("similar-note").textContent = `Similarity: cosine of the slides' descriptors (${summary || name}); 1: alike, near 0: unrelated.`;
}

function setSources(sources) {
  const select = $("feature-source");
  const keep = select.value;
  select.textContent = "";
  for (const s of sources) select.append(el("option", { value: s }, SOURCE_TEXT[s]));
  select.value = sources.includes(keep) ? keep : sources[0];
}

async function openSlide(slideId, highlight) {
  showError("");
  status(`loading ${slideId}...`);
  state.slide = slideId;
  state.highlight = highlight || null;
  state.mark = null;
  for (const b of document.querySelectorAll("#slides-panel button")) b.classList.toggle("active", b.dataset.slideId === slideId);
  let m, thumb;
  try { // the slide's description and its picture, then both at once: never one slide's scale on another's image
    m = await api(`/api/slides/${encodeURIComponent(slideId)}`);
    thumb = await new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error(`the thumbnail of ${slideId} failed to load`));
      img.src = `/api/slides/${encodeURIComponent(slideId)}/thumbnail`;
    });
  } catch (err) { showError(err.message); status(""); return; }
  if (state.slide !== slideId) return; // another slide was opened meanwhile
  state.meta = m;
  state.thumb = thumb;
  state.overlay = null;
  const predicted = isPredicted();
  if (predicted) {
    $("slide-title").textContent = `${m.name} - predicted from H&E`;
    const p = m.predicted;
    $("slide-subtitle").textContent = `${m.n_regions} ${p.layout}; ${m.genes.length} genes and ${m.pathways.length} pathway scores predicted (method ${p.method}) from reference slides ${p.reference_slides.join(", ") || "-"}; nothing here was measured.`;
  } else {
    $("slide-title").textContent = `${slideId} (${m.kind}, ${m.n_regions} regions${labelText(m.labels) ? "; " + labelText(m.labels) : ""})`;
    $("slide-subtitle").textContent = m.measured.genes ? "Spatial transcriptomics measured on this slide." : "H&E only: gene and pathway values are predicted from similar regions of other slides.";
  }
  $("slide-subtitle").append(m.mpp ? ` ${m.mpp.toFixed(3)} µm per pixel.` : " The slide's scale (µm per pixel) is unknown.");
  // what can be coloured, and from which source
  $("feature-kind").querySelector('option[value="label"]').disabled = predicted || !m.measured.labels && !(state.info && state.info.region_labels.length);
  if (predicted && $("feature-kind").value === "label") $("feature-kind").value = "cluster";
  setSources(predicted ? ["predicted", "uncertainty"] : ["auto", "measured", "predicted"]);
  $("search-hint").hidden = predicted;
  $("descriptor").disabled = predicted;
  $("position").textContent = "Click on the slide to read a position (in µm from the slide's top-left corner) and the value there.";
  await Promise.all([loadOverlay(), loadSimilarSlides()]);
  status(predicted ? `${m.name}: predicted from H&E; click on the slide to read values` : `${slideId}: drag or click on the slide to find similar regions`);
}

// ---------------------------------------------------------------- overlay
function currentFeature() {
  const kind = $("feature-kind").value;
  if (kind === "cluster" || kind === "label") return kind;
  const name = $("feature-name").value.trim();
  if (!name) return null;
  return `${kind}:${name}`;
}

let overlayRequests = 0;

async function loadOverlay() {
  if (!state.slide) return;
  const feature = currentFeature();
  if (!feature) { status("type a gene or pathway name"); return; }
  showError("");
  if ($("status").textContent === "type a gene or pathway name") status("");
  const params = new URLSearchParams({ feature, source: $("feature-source").value });
  const ticket = ++overlayRequests; // only the latest request's answer (or error) is shown
  const slide = state.slide;
  let overlay = null;
  try {
    overlay = await api(`/api/slides/${encodeURIComponent(slide)}/overlay?${params}`);
  } catch (err) {
    if (ticket !== overlayRequests || slide !== state.slide) return;
    showError(err.message);
  }
  if (ticket !== overlayRequests || slide !== state.slide || !state.meta || state.meta.slide_id !== slide) return;
  state.overlay = overlay;
  if (state.mark) showPosition(state.mark); // the value under the mark, of the new feature
  draw();
  drawLegend();
}

function colour(o, i) {
  const v = o.values[i];
  if (v === null || v === undefined) return null;
  if (o.kind === "categorical") return o.colours[v];
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
  const o = state.overlay && state.overlay.slide_id === state.meta.slide_id ? state.overlay : null;
  if (o && state.opacity > 0) {
    const r = Math.max(2, (state.meta.region_diameter_px || 50) * state.scale / 2);
    // spots at their own size (an index written before spot_diameter_px: half the patch around them)
    const spot = Math.max(2, state.meta.spot_diameter_px ? state.meta.spot_diameter_px * state.scale / 2 : r * 0.5);
    ctx.globalAlpha = state.opacity;
    for (let i = 0; i < o.x.length; i++) {
      const c = colour(o, i);
      if (!c) continue;
      ctx.fillStyle = c;
      const x = o.x[i] * state.scale, y = o.y[i] * state.scale;
      if (state.meta.kind === "tiles") ctx.fillRect(x - r, y - r, 2 * r, 2 * r);
      else { ctx.beginPath(); ctx.arc(x, y, spot, 0, 2 * Math.PI); ctx.fill(); }
    }
    ctx.globalAlpha = 1;
  }
  const box = state.drag || state.highlight;
  if (box) {
    ctx.strokeStyle = "#ff00aa";
    ctx.lineWidth = 2;
    ctx.strokeRect(box.x0 * state.scale, box.y0 * state.scale, (box.x1 - box.x0) * state.scale, (box.y1 - box.y0) * state.scale);
  }
  if (state.mark) {
    const x = state.mark.x * state.scale, y = state.mark.y * state.scale;
    ctx.strokeStyle = "#000"; ctx.lineWidth = 3;
    ctx.beginPath(); ctx.moveTo(x - 7, y); ctx.lineTo(x + 7, y); ctx.moveTo(x, y - 7); ctx.lineTo(x, y + 7); ctx.stroke();
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 1; ctx.stroke();
  }
  drawScaleBar();
}

// A bar of a round length (10 µm ... 2 cm) between about 60 and 160 screen pixels, bottom left.
function drawScaleBar() {
  const bar = $("scale-bar");
  const mpp = state.meta && state.meta.mpp;
  if (!mpp) { bar.hidden = true; return; }
  const pxPerUm = state.scale / mpp;
  let length = SCALE_STEPS_UM[0];
  for (const step of SCALE_STEPS_UM) if (step * pxPerUm <= 160) length = step;
  bar.hidden = false;
  $("scale-bar-line").style.width = `${Math.round(length * pxPerUm)}px`; // CSSOM: allowed by the CSP
  $("scale-bar-text").textContent = length >= 1000 ? `${length / 1000} mm` : `${length} µm`;
}

function drawLegend() {
  const o = state.overlay, bar = $("colorbar"), ticks = $("colorbar-ticks");
  for (const id of ["legend-title", "legend-swatches", "legend-scale", "legend-definition"]) $(id).textContent = "";
  ticks.textContent = "";
  bar.hidden = true;
  if (!o) return;
  if (o.kind === "categorical") {
    $("legend-title").textContent = o.legend.title;
    o.categories.forEach((c, i) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = o.colours[i]; // CSSOM, not a style attribute: allowed by the CSP
      $("legend-swatches").append(el("span", { class: "item" }, swatch, c));
    });
    $("legend-definition").textContent = o.legend.note;
    return;
  }
  const v = o.value, sc = o.scale;
  $("legend-title").textContent = `${o.label}: ${v.what}`;
  bar.hidden = false;
  const ctx = bar.getContext("2d");
  for (let x = 0; x < bar.width; x++) {
    ctx.fillStyle = VIRIDIS[Math.min(VIRIDIS.length - 1, Math.floor((x / bar.width) * VIRIDIS.length))];
    ctx.fillRect(x, 0, 1, bar.height);
  }
  const mid = (o.vmin + o.vmax) / 2;
  ticks.append(el("span", {}, `≤ ${fmt(o.vmin)}`), el("span", {}, fmt(mid)), el("span", {}, `≥ ${fmt(o.vmax)} ${v.unit}`));
  const [lo, hi] = sc.clip_percentiles;
  $("legend-scale").textContent = `Colour scale ${fmt(sc.vmin)} to ${fmt(sc.vmax)} ${v.unit}: the ${ordinal(lo)} to ${ordinal(hi)} percentile of ${sc.over}`
    + ` (set per slide). ${sc.n_below} of ${sc.n} regions lie below and ${sc.n_above} above it and take the end colours.`;
  $("legend-definition").textContent = `${v.unit}: ${v.definition}.`;
}

function nearestRegion(p) {
  const o = state.overlay;
  if (!o) return -1;
  let best = -1, bestD = Infinity;
  for (let i = 0; i < o.x.length; i++) {
    const d = (o.x[i] - p.x) ** 2 + (o.y[i] - p.y) ** 2;
    if (d < bestD) { bestD = d; best = i; }
  }
  const reach = Math.max(state.meta.region_diameter_px || 50, state.meta.spot_diameter_px || 0) * 0.75;
  return bestD <= reach * reach ? best : -1;
}

function showPosition(p) {
  const m = state.meta;
  let text = positionText(m.name || state.slide, p.x, p.y, m.mpp);
  const i = nearestRegion(p);
  const o = state.overlay;
  if (i >= 0 && o) {
    const v = o.values[i];
    if (o.kind === "categorical") text += `: ${o.categories[v]}`;
    else text += `: ${o.label.split(" (")[0]} ${fmt(v)} ${o.value.unit}, ${o.value.what}`;
  } else text += ": no region here";
  $("position").textContent = text;
  state.mark = p;
}

// ---------------------------------------------------------------- similar slides and regions
async function loadSimilarSlides() {
  const list = $("similar-slides");
  list.textContent = "";
  describeDescriptor();
  if (isPredicted()) {
    $("similar-note").textContent = "This slide was predicted from H&E and is not in the index: similar slides and regions are searched among indexed slides.";
    return;
  }
  const params = new URLSearchParams({ k: 5, descriptor: $("descriptor").value });
  try {
    const res = await api(`/api/slides/${encodeURIComponent(state.slide)}/similar?${params}`);
    for (const r of res.results) {
      list.append(el("li", { dataset: { slideId: r.slide_id }, onclick: () => openSlide(r.slide_id) },
        el("img", { src: r.thumbnail_url, alt: r.slide_id }),
        el("div", {}, el("div", {}, r.slide_id), el("div", { class: "score", title: "cosine similarity of the slide descriptors" }, `similarity ${r.score.toFixed(3)}`),
          el("div", { class: "muted" }, labelText(r.labels)))));
    }
  } catch (err) { showError(err.message); }
}

function toLevel0(ev) {
  const rect = $("slide-canvas").getBoundingClientRect();
  return { x: (ev.clientX - rect.left) / state.scale, y: (ev.clientY - rect.top) / state.scale };
}

function setupCanvas() {
  const canvas = $("slide-canvas");
  let start = null;
  canvas.addEventListener("mousedown", (ev) => { if (state.slide && state.meta) start = toLevel0(ev); });
  canvas.addEventListener("mousemove", (ev) => {
    if (!start || isPredicted()) return;
    const p = toLevel0(ev);
    state.drag = { x0: Math.min(start.x, p.x), y0: Math.min(start.y, p.y), x1: Math.max(start.x, p.x), y1: Math.max(start.y, p.y) };
    draw();
  });
  canvas.addEventListener("mouseup", (ev) => {
    if (!start) return;
    const p = toLevel0(ev);
    let box = { x0: Math.min(start.x, p.x), y0: Math.min(start.y, p.y), x1: Math.max(start.x, p.x), y1: Math.max(start.y, p.y) };
    const half = (state.meta.region_diameter_px || 50) / 2;
    const click = box.x1 - box.x0 < 2 * half / 4 && box.y1 - box.y0 < 2 * half / 4;
    start = null;
    state.drag = null;
    if (click) showPosition(p);
    if (isPredicted()) { draw(); return; }
    if (click) box = { x0: p.x - half, y0: p.y - half, x1: p.x + half, y1: p.y + half }; // one region's square
    state.highlight = box;
    draw();
    similarRegions(box);
  });
}

async function similarRegions(box) {
  const list = $("similar-regions");
  list.textContent = "";
  showError("");
  const params = new URLSearchParams({ x0: box.x0.toFixed(1), y0: box.y0.toFixed(1), x1: box.x1.toFixed(1), y1: box.y1.toFixed(1), units: "px", k: 8 });
  try {
    const res = await api(`/api/slides/${encodeURIComponent(state.slide)}/regions/similar?${params}`);
    status(`${res.query.regions.length} region(s) selected on ${state.slide}; ${res.results.length} similar regions`);
    for (const r of res.results) {
      const half = r.diameter_px / 2;
      list.append(el("li", { dataset: { slideId: r.slide_id, regionId: r.region_id },
        onclick: () => openSlide(r.slide_id, { x0: r.x - half, y0: r.y - half, x1: r.x + half, y1: r.y + half }) },
        el("img", { src: r.thumbnail_url, alt: `region on ${r.slide_id}` }),
        el("div", {}, el("div", { class: "where" }, positionText(r.slide_id, r.x, r.y, r.mpp)),
          el("div", { class: "score", title: "cosine similarity of the image embeddings" }, `similarity ${r.score.toFixed(3)}`),
          el("div", { class: "muted" }, r.label ? `label: ${r.label}` : ""))));
    }
  } catch (err) { showError(err.message); }
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
    } else if (input.id === "feature-name" && isPredicted()) { // the pathways this slide's predictions hold
      const low = text.toLowerCase();
      items = state.meta.pathways.filter((p) => p.toLowerCase().includes(low)).slice(0, 20).map((p) => ({ id: p, label: p.split(":").pop() }));
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
  showError("");
  const params = new URLSearchParams({ name, k: 10 });
  if ($("pathway-within").value) params.set("within", $("pathway-within").value);
  try {
    const res = await api(`/api/pathways/slides?${params}`);
    list.append(el("li", { class: "muted note" }, `${res.label}${res.within ? " in " + res.within : ""}: slides ranked by the mean score of their regions`
      + " (the pathway's rank score, 0-1: near 1, its genes are among the most expressed; measured, or predicted for slides without transcriptomics)"));
    for (const r of res.results) {
      list.append(el("li", { dataset: { slideId: r.slide_id }, onclick: () => { $("feature-kind").value = "kg"; $("feature-name").hidden = false; $("feature-name").value = res.entity; openSlide(r.slide_id); } },
        el("img", { src: r.thumbnail_url, alt: r.slide_id }),
        el("div", {}, el("div", {}, r.slide_id), el("div", { class: "score", title: "mean of the regions' pathway scores" }, `mean score ${r.score.toFixed(3)}`),
          el("div", { class: "muted" }, `${r.source}, ${r.n_regions} regions`))));
    }
  } catch (err) { showError(err.message); }
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
        el("div", {}, el("div", {}, r.slide_id), el("div", { class: "score", title: "cosine similarity of the slide descriptors" }, `similarity ${r.score.toFixed(3)}`))));
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
$("overlay-opacity").addEventListener("input", () => {
  state.opacity = Number($("overlay-opacity").value);
  $("opacity-value").textContent = `${Math.round(state.opacity * 100)}%`;
  draw();
});
$("descriptor").addEventListener("change", () => { describeDescriptor(); if (state.slide) loadSimilarSlides(); });
$("pathway-input").addEventListener("input", () => complete($("pathway-input"), $("pathway-options"), "kg"));
$("pathway-form").addEventListener("submit", pathwayQuery);
$("upload-form").addEventListener("submit", upload);
setupCanvas();
loadSlides().catch((err) => showError(err.message));
