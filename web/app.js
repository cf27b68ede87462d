// snapshop search page. No dependencies, no build step: served as is from the binary.
//
// A photo (picked, taken with the camera, dropped or pasted) goes to POST /v1/search as
// multipart `image` + a JSON `options` part with explain=true; the results come back as a grid,
// and each result's CtxYNet attention (weights over the query photo's h×w grid) can be laid over
// the photo as a heatmap, bilinearly upsampled, as in Figure 6 of Ji et al. (MM'17).
// Requests carry the API key typed in the key field (a search key, kept in localStorage) as
// `Authorization: Bearer`; result images are fetched with it too and shown from blob URLs.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form");
  const drop = $("drop");
  const photoInput = $("photo");
  const cameraInput = $("camera");
  const fileName = $("file-name");
  const filterInput = $("filter");
  const merchantInput = $("merchant");
  const kInput = $("k");
  const keyInput = $("key");
  const searchButton = $("search");
  const statusBox = $("status");
  const errorBox = $("error");
  const queryFigure = $("query-figure");
  const queryEmpty = $("query-empty");
  const queryImg = $("query-img");
  const overlay = $("overlay");
  const caption = $("overlay-caption");
  const legend = $("legend");
  const timings = $("timings");
  const modelLine = $("model");
  const resultsList = $("results");
  const resultsEmpty = $("results-empty");
  const template = $("result-template");

  const DEFAULT_CAPTION = caption.textContent;

  let photo = null; // the File or Blob being searched with
  let photoUrl = null; // its object URL, shown in the query figure
  let results = []; // the last response's results
  let active = -1; // the result whose attention is drawn, or -1
  let inflight = null; // AbortController of the running search

  const setState = (s) => { document.body.dataset.state = s; };
  setState("idle");

  // --- the API key -----------------------------------------------------------------------------

  const KEY_STORE = "snapshop.key";
  try { keyInput.value = localStorage.getItem(KEY_STORE) || ""; } catch (_) { /* storage off */ }
  keyInput.addEventListener("change", () => {
    try { localStorage.setItem(KEY_STORE, keyInput.value.trim()); } catch (_) { /* storage off */ }
  });
  function authHeaders() {
    const key = keyInput.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }
  let imageUrls = []; // object URLs of the shown result images, revoked with the next results

  // --- the photo -------------------------------------------------------------------------------

  function setPhoto(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError(null, `“${file.name || "that file"}” is not an image.`);
      return;
    }
    photo = file;
    if (photoUrl) URL.revokeObjectURL(photoUrl);
    photoUrl = URL.createObjectURL(file);
    queryImg.src = photoUrl;
    queryFigure.hidden = false;
    queryEmpty.hidden = true;
    const size = file.size ? ` (${formatBytes(file.size)})` : "";
    fileName.textContent = `${file.name || "pasted image"}${size}`;
    clearOverlay();
    search();
  }

  for (const input of [photoInput, cameraInput]) {
    input.addEventListener("change", () => {
      setPhoto(input.files && input.files[0]);
      input.value = ""; // choosing the same file again searches again
    });
  }

  // Dropping anywhere on the page works; outside the drop zone the browser would open the file.
  let dragDepth = 0;
  document.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth++;
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) drop.classList.remove("over");
  });
  document.addEventListener("dragover", (e) => {
    if (hasFiles(e)) e.preventDefault();
  });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    drop.classList.remove("over");
    const file = [...e.dataTransfer.files].find((f) => !f.type || f.type.startsWith("image/"));
    if (file) setPhoto(file);
    else showError(null, "Drop an image file (JPEG, PNG or WebP).");
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData ? e.clipboardData.items : [])].find(
      (i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) {
      e.preventDefault();
      setPhoto(item.getAsFile());
    }
  });
  function hasFiles(e) {
    return e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  }

  // --- the search ------------------------------------------------------------------------------

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!photo) {
      showError(null, "Choose a photo first.");
      photoInput.focus();
      return;
    }
    search();
  });

  function options() {
    const o = { explain: true };
    const k = kInput.value.trim();
    if (k !== "") o.k = /^\d+$/.test(k) ? Number(k) : k; // the API explains a bad k
    const filter = filterInput.value.trim();
    if (filter) o.filter = filter;
    const merchant = merchantInput.value.trim();
    if (merchant) o.merchant = merchant;
    return o;
  }

  async function search() {
    if (!photo) return;
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    const body = new FormData();
    body.append("image", photo, photo.name || "photo");
    body.append("options", new Blob([JSON.stringify(options())], { type: "application/json" }));
    hideError();
    setState("searching");
    searchButton.disabled = true;
    statusBox.textContent = "Searching…";
    let response, json;
    try {
      response = await fetch("/v1/search", {
        method: "POST", body, signal: controller.signal, headers: authHeaders(),
      });
      json = await response.json().catch(() => null);
    } catch (err) {
      if (controller.signal.aborted) return;
      finish(controller);
      showError(null, `The service could not be reached (${err.message}).`);
      return;
    }
    if (controller.signal.aborted) return;
    finish(controller);
    if (!response.ok) {
      const e = json && json.error;
      showError(e ? e.code : `http_${response.status}`,
        e ? e.message : `The service answered ${response.status} ${response.statusText}.`);
      return;
    }
    render(json);
  }

  function finish(controller) {
    if (inflight === controller) inflight = null;
    searchButton.disabled = false;
  }

  // --- results ---------------------------------------------------------------------------------

  function render(body) {
    results = body.results || [];
    clearOverlay();
    for (const url of imageUrls) URL.revokeObjectURL(url);
    imageUrls = [];
    resultsList.replaceChildren(...results.map(card));
    resultsEmpty.hidden = results.length > 0;
    resultsEmpty.textContent = results.length ? "" : "Nothing matched. Try a wider filter or another merchant.";
    const n = results.length;
    const how = body.reranked ? `re-ranked from ${body.candidates} candidates` : "first pass only";
    statusBox.textContent = `${n} result${n === 1 ? "" : "s"}, ${how}, in ${fmtMs(body.timings_ms.total)}.`;
    modelLine.textContent = `Model ${body.model_version}`;
    showTimings(body.timings_ms);
    setState("done");
  }

  function card(r, i) {
    const li = template.content.firstElementChild.cloneNode(true);
    li.dataset.productId = r.product_id;
    const img = li.querySelector(".thumb img");
    img.alt = r.title;
    img.addEventListener("error", () => { img.alt = "image unavailable"; }, { once: true });
    fetch(imageUrl(r), { headers: authHeaders() })
      .then((resp) => (resp.ok ? resp.blob() : Promise.reject(new Error(String(resp.status)))))
      .then((blob) => {
        const url = URL.createObjectURL(blob);
        imageUrls.push(url);
        img.src = url;
      })
      .catch(() => { img.alt = "image unavailable"; });
    const title = li.querySelector(".title");
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `${i + 1}. `;
    title.append(rank, r.title);
    li.querySelector(".meta").textContent = `${r.merchant} · ${r.product_id}`;
    const score = li.querySelector(".score");
    const strong = document.createElement("strong");
    strong.textContent = r.score.toFixed(3);
    score.append("score ", strong, ` · first pass #${r.first_pass_rank}`);
    score.title = `first-pass score ${r.first_pass_score.toFixed(3)}`;
    const tags = li.querySelector(".tags");
    tags.setAttribute("aria-label", "tags");
    for (const t of r.tags) {
      const tag = document.createElement("li");
      tag.textContent = t;
      tags.append(tag);
    }
    const toggle = li.querySelector(".toggle");
    toggle.setAttribute("aria-controls", "query-figure");
    toggle.setAttribute("aria-label", `Show attention for ${r.title}`);
    if (!r.attention) {
      toggle.disabled = true;
      toggle.textContent = "No attention";
      toggle.title = "Attention comes with the re-rank only";
    } else {
      toggle.addEventListener("click", () => setActive(active === i ? -1 : i));
    }
    return li;
  }

  function imageUrl(r) {
    const e = encodeURIComponent;
    return `/v1/merchants/${e(r.merchant)}/products/${e(r.product_id)}/images/${e(r.image_id)}`;
  }

  function showTimings(t) {
    for (const div of timings.children) {
      const stage = div.querySelector("dt").textContent;
      div.querySelector("dd").textContent = t && typeof t[stage] === "number" ? fmtMs(t[stage]) : "–";
    }
  }

  // --- the attention overlay -------------------------------------------------------------------

  function setActive(i) {
    active = i;
    resultsList.querySelectorAll(".card").forEach((li, j) => {
      const on = j === i;
      li.classList.toggle("active", on);
      const t = li.querySelector(".toggle");
      if (!t.disabled) {
        t.setAttribute("aria-pressed", String(on));
        t.textContent = on ? "Hide attention" : "Show attention";
        t.setAttribute("aria-label", `${on ? "Hide" : "Show"} attention for ${results[j].title}`);
      }
    });
    drawActive();
  }

  function clearOverlay() {
    active = -1;
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    overlay.dataset.drawn = "false";
    caption.textContent = DEFAULT_CAPTION;
    legend.hidden = true;
  }

  function drawActive() {
    const r = results[active];
    if (!r || !r.attention) {
      const keep = active;
      clearOverlay();
      active = keep;
      return;
    }
    if (!queryImg.complete || !queryImg.naturalWidth) {
      queryImg.addEventListener("load", drawActive, { once: true });
      return;
    }
    drawHeatmap(r.attention);
    caption.textContent = `Attention of your photo given ${r.title} (${r.attention.h}×${r.attention.w} grid).`;
    legend.hidden = false;
    // On a narrow screen the photo sits above the results: bring it into view.
    const box = queryFigure.getBoundingClientRect();
    if (box.bottom < 0 || box.top > window.innerHeight) {
      queryFigure.scrollIntoView({ block: "nearest" });
    }
  }

  // Bilinear upsampling of the h×w weights to the displayed photo (pixel centres aligned, edges
  // clamped), normalised to [0, 1] over the grid, coloured with a jet ramp and blended with an
  // opacity that grows with the weight.
  function drawHeatmap({ h, w, weights }) {
    const rect = queryImg.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const scale = Math.min(dpr, 1024 / Math.max(rect.width, rect.height, 1));
    const W = Math.max(1, Math.round(rect.width * scale));
    const H = Math.max(1, Math.round(rect.height * scale));
    overlay.width = W;
    overlay.height = H;
    let lo = Infinity, hi = -Infinity;
    for (const v of weights) { if (v < lo) lo = v; if (v > hi) hi = v; }
    const span = hi - lo;
    const norm = weights.map((v) => (span > 0 ? (v - lo) / span : 0.5));
    const ctx = overlay.getContext("2d");
    const image = ctx.createImageData(W, H);
    const px = image.data;
    for (let y = 0; y < H; y++) {
      const gy = Math.min(Math.max(((y + 0.5) / H) * h - 0.5, 0), h - 1);
      const y0 = Math.floor(gy), y1 = Math.min(y0 + 1, h - 1), fy = gy - y0;
      for (let x = 0; x < W; x++) {
        const gx = Math.min(Math.max(((x + 0.5) / W) * w - 0.5, 0), w - 1);
        const x0 = Math.floor(gx), x1 = Math.min(x0 + 1, w - 1), fx = gx - x0;
        const top = norm[y0 * w + x0] * (1 - fx) + norm[y0 * w + x1] * fx;
        const bottom = norm[y1 * w + x0] * (1 - fx) + norm[y1 * w + x1] * fx;
        const v = top * (1 - fy) + bottom * fy;
        const o = (y * W + x) * 4;
        const [r, g, b] = jet(v);
        px[o] = r; px[o + 1] = g; px[o + 2] = b;
        px[o + 3] = Math.round(255 * (0.22 + 0.5 * v));
      }
    }
    ctx.putImageData(image, 0, 0);
    overlay.dataset.drawn = "true";
  }

  function jet(v) {
    const c = (x) => Math.round(255 * Math.min(Math.max(x, 0), 1));
    return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
  }

  if (window.ResizeObserver) {
    new ResizeObserver(() => { if (active >= 0) drawActive(); }).observe(queryImg);
  }
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && active >= 0) setActive(-1);
  });

  // --- messages --------------------------------------------------------------------------------

  function showError(code, message) {
    setState("error");
    statusBox.textContent = "";
    errorBox.replaceChildren();
    if (code) {
      const c = document.createElement("code");
      c.textContent = code;
      errorBox.append(c, ": ");
    }
    errorBox.append(message);
    errorBox.hidden = false;
  }

  function hideError() {
    errorBox.hidden = true;
    errorBox.replaceChildren();
  }

  function fmtMs(ms) {
    return `${ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : Math.round(ms)} ms`;
  }

  function formatBytes(n) {
    return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(0)} kB` : `${(n / 1048576).toFixed(1)} MB`;
  }

  // The query string can prefill the fields: /?filter=category:dress&merchant=acme&k=5
  const params = new URLSearchParams(location.search);
  if (params.has("filter")) filterInput.value = params.get("filter");
  if (params.has("merchant")) merchantInput.value = params.get("merchant");
  if (params.has("k")) kInput.value = params.get("k");
})();
