// snapshop merchant console. No dependencies, no build step: served as is from the binary.
//
// Signs in with a key (GET /v1/whoami tells which merchant it acts for; an admin key picks one),
// then drives the merchant's part of the API: the catalogue paged by cursor (GET …/products),
// found by id or title among the loaded products or by photo (POST /v1/search with `merchant`),
// products created from a form with picked or dropped photos (multipart POST), edited and deleted
// with If-Match (a 412 `version_conflict` reloads the product and says so), images added and
// deleted, and imports started (POST …/imports, the file as the body) and watched until they end.
// Every request carries the key as `Authorization: Bearer`; product images are fetched with it
// and shown from blob URLs. Errors show the API's own code and message.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const e = encodeURIComponent;

  const PAGE_SIZE = 10;
  const POLL_MS = 500;
  // The key is shared with the search page (a merchant key searches its own catalogue there).
  const KEY_STORE = "snapshop.key";
  const MERCHANT_STORE = "snapshop.console.merchant";

  const errorBox = $("error");
  const notice = $("notice");
  const signinForm = $("signin");
  const keyInput = $("key");
  const merchantInput = $("merchant");
  const signinButton = $("signin-button");
  const signoutButton = $("signout");
  const changeKeyButton = $("change-key");
  const whoamiLine = $("whoami");
  const stats = $("stats");
  const workspace = $("workspace");
  const createForm = $("create");
  const newImages = $("new-images");
  const newPreviews = $("new-previews");
  const filterInput = $("filter");
  const photoInput = $("photo");
  const matches = $("matches");
  const matchList = $("match-list");
  const listStatus = $("list-status");
  const productList = $("product-list");
  const loadMore = $("load-more");
  const importForm = $("import");
  const importFile = $("import-file");
  const importFormat = $("import-format");
  const jobBox = $("job");
  const jobErrors = $("job-errors");
  const importsList = $("imports");
  const editor = $("editor");
  const editForm = $("edit");
  const editError = $("edit-error");
  const editStatus = $("edit-status");
  const editImages = $("edit-images");
  const template = $("product-template");

  let who = null; // GET /v1/whoami of the signed-in key
  let merchant = ""; // the merchant managed
  let products = []; // loaded, in list order
  let cursor = null; // next page's cursor, or null on the last page
  let generation = 0; // bumped on every reload: late answers of an older list are dropped
  let total = null; // the merchant's product count (GET /v1/merchants/{m})
  let newFiles = []; // photos for the product being created
  let editing = null; // { product, etag, opener }
  let watched = null; // { id, timer } of the import being watched
  const thumbs = new Map(); // image path -> Promise of an object URL

  // --- requests --------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  let busy = 0;
  const setBusy = (d) => { busy += d; document.body.dataset.busy = String(busy); };
  setBusy(0);

  function authHeaders() {
    const key = keyInput.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  // One API call: resolves to { status, json, etag }, or throws an ApiError with the API's code.
  async function api(method, path, { body, headers = {}, ifMatch } = {}) {
    const h = { ...authHeaders(), ...headers };
    if (ifMatch) h["If-Match"] = ifMatch;
    setBusy(1);
    try {
      let r;
      try {
        r = await fetch(path, { method, body, headers: h });
      } catch (err) {
        throw new ApiError(0, "network", `The service could not be reached (${err.message}).`);
      }
      const text = await r.text();
      let json = null;
      try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
      if (!r.ok) {
        const err = json && json.error;
        throw new ApiError(r.status, err ? err.code : `http_${r.status}`,
          err ? err.message : `The service answered ${r.status} ${r.statusText}.`);
      }
      return { status: r.status, json, etag: r.headers.get("etag") };
    } finally {
      setBusy(-1);
    }
  }

  const merchantPath = () => `/v1/merchants/${e(merchant)}`;
  const productPath = (id) => `${merchantPath()}/products/${e(id)}`;
  const imagePath = (id, imageId) => `${productPath(id)}/images/${e(imageId)}`;

  // --- messages --------------------------------------------------------------------------------

  function fill(box, err) {
    box.replaceChildren();
    if (err.code) {
      const c = document.createElement("code");
      c.textContent = err.code;
      box.append(c, ": ");
    }
    box.append(err.message || String(err));
    box.hidden = false;
  }

  function showError(err) {
    notice.hidden = true;
    fill(errorBox, err);
  }

  function say(message) {
    errorBox.hidden = true;
    notice.textContent = message;
    notice.hidden = false;
  }

  function clearMessages() {
    errorBox.hidden = true;
    notice.hidden = true;
  }

  // Runs an action, showing its failure in `box` (the page's error box by default).
  async function attempt(fn, box = null) {
    try {
      return await fn();
    } catch (err) {
      if (box) fill(box, err); else showError(err);
      return undefined;
    }
  }

  // --- sign in ---------------------------------------------------------------------------------

  try {
    keyInput.value = localStorage.getItem(KEY_STORE) || "";
    merchantInput.value = localStorage.getItem(MERCHANT_STORE) || "";
  } catch (_) { /* storage off */ }
  const params = new URLSearchParams(location.search);
  if (params.has("merchant")) merchantInput.value = params.get("merchant");

  signinForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    signIn();
  });

  async function signIn() {
    clearMessages();
    const key = keyInput.value.trim();
    if (!key) {
      showError({ message: "Enter an API key (a merchant key, or an admin key)." });
      keyInput.focus();
      return;
    }
    try { localStorage.setItem(KEY_STORE, key); } catch (_) { /* storage off */ }
    const r = await attempt(() => api("GET", "/v1/whoami"));
    if (!r) { signedOut(); return; }
    who = r.json;
    if (who.kind === "search") {
      signedOut();
      showError({ code: "forbidden", message: "This is a search key: it can only search. Sign in with a merchant key or an admin key." });
      return;
    }
    if (who.kind === "merchant") {
      merchantInput.value = who.merchant;
      merchantInput.readOnly = true;
    } else {
      merchantInput.readOnly = false;
      if (!merchantInput.value.trim()) {
        const what = who.kind === "dev" ? "A development server (no keys)" : "An admin key";
        signedOut(false);
        whoamiLine.textContent = `${what}: choose the merchant to manage, then sign in.`;
        merchantInput.focus();
        return;
      }
      try { localStorage.setItem(MERCHANT_STORE, merchantInput.value.trim()); } catch (_) { /* off */ }
    }
    merchant = merchantInput.value.trim();
    const label = who.label ? ` “${who.label}”` : "";
    whoamiLine.textContent = who.kind === "merchant"
      ? `Signed in with merchant key ${who.key_id}${label} of ${merchant}.`
      : who.kind === "admin"
        ? `Signed in with admin key ${who.key_id}${label}, managing ${merchant}.`
        : `Development mode (no keys), managing ${merchant}.`;
    document.body.dataset.signedIn = who.kind;
    $("signin-heading").textContent = "Signed in";
    signinForm.classList.add("compact");
    signinForm.classList.toggle("merchant", who.kind === "merchant");
    changeKeyButton.hidden = false;
    workspace.hidden = false;
    signoutButton.hidden = false;
    signinButton.textContent = who.kind === "merchant" ? "Sign in again" : "Switch merchant";
    clearPhotoSearch();
    stopWatching();
    jobBox.hidden = true;
    await Promise.all([loadStats(), reloadList(), loadImports()]);
  }

  function signedOut(clearLine = true) {
    who = null;
    delete document.body.dataset.signedIn;
    $("signin-heading").textContent = "Sign in";
    signinForm.classList.remove("compact", "merchant");
    changeKeyButton.hidden = true;
    workspace.hidden = true;
    signoutButton.hidden = true;
    signinButton.textContent = "Sign in";
    merchantInput.readOnly = false;
    if (clearLine) whoamiLine.textContent = "";
    stats.hidden = true;
    stopWatching();
  }

  changeKeyButton.addEventListener("click", () => {
    signinForm.classList.remove("compact", "merchant");
    changeKeyButton.hidden = true;
    signinButton.textContent = "Sign in";
    keyInput.focus();
    keyInput.select();
  });

  signoutButton.addEventListener("click", () => {
    try { localStorage.removeItem(KEY_STORE); } catch (_) { /* storage off */ }
    keyInput.value = "";
    if (who && who.kind === "merchant") merchantInput.value = "";
    signedOut();
    for (const p of thumbs.values()) p.then((u) => URL.revokeObjectURL(u), () => {});
    thumbs.clear();
    productList.replaceChildren();
    clearMessages();
    keyInput.focus();
  });

  async function loadStats() {
    try {
      const m = (await api("GET", merchantPath())).json;
      total = m.products;
      const n = (x) => x.toLocaleString("en");
      $("stat-products").textContent = `${n(m.products)} of ${n(m.max_products)}`;
      $("stat-images").textContent = `${n(m.images)} of ${n(m.max_images)}`;
    } catch (err) {
      if (err.code !== "merchant_not_found") { showError(err); return; }
      total = 0; // an admin chose a merchant that has nothing yet
      $("stat-products").textContent = "0";
      $("stat-images").textContent = "0";
    }
    stats.hidden = false;
    showListStatus();
  }

  // --- the list --------------------------------------------------------------------------------

  async function reloadList() {
    generation++;
    products = [];
    cursor = null;
    productList.replaceChildren();
    await loadPage();
  }

  async function loadPage() {
    const g = generation;
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (cursor) q.set("cursor", cursor);
    loadMore.disabled = true;
    const r = await attempt(() => api("GET", `${merchantPath()}/products?${q}`));
    loadMore.disabled = false;
    if (!r || g !== generation) return;
    cursor = r.json.next_cursor || null;
    for (const p of r.json.products) {
      if (products.some((q2) => q2.id === p.id)) continue; // created here since the reload
      products.push(p);
      productList.append(row(p));
    }
    loadMore.hidden = !cursor;
    applyFilter();
  }

  loadMore.addEventListener("click", () => loadPage());
  $("reload").addEventListener("click", () => { clearMessages(); loadStats(); reloadList(); });

  function row(p, score) {
    const li = template.content.firstElementChild.cloneNode(true);
    li.dataset.productId = p.id;
    li.querySelector(".ptitle").textContent = p.title;
    li.querySelector(".pid").textContent = p.id;
    const n = p.images ? p.images.length : 0;
    li.querySelector(".pcount").textContent = score !== undefined
      ? `score ${score.toFixed(3)}`
      : `${n} image${n === 1 ? "" : "s"} · v${p.version}`;
    const tags = li.querySelector(".tags");
    tags.setAttribute("aria-label", "tags");
    for (const t of p.tags || []) {
      const tag = document.createElement("li");
      tag.textContent = t;
      tags.append(tag);
    }
    const img = li.querySelector("img");
    img.alt = p.title;
    if (p.images && p.images.length) showImage(img, p.id, p.images[0].id);
    const edit = li.querySelector(".pedit");
    edit.setAttribute("aria-label", `Edit ${p.id}`);
    edit.addEventListener("click", () => openEditor(p.id, edit));
    return li;
  }

  function rowOf(id) {
    return [...productList.children].find((li) => li.dataset.productId === id) || null;
  }

  function replaceProduct(p) {
    const i = products.findIndex((q) => q.id === p.id);
    if (i >= 0) products[i] = p;
    const old = rowOf(p.id);
    if (old) {
      const fresh = row(p);
      fresh.classList.toggle("fresh", old.classList.contains("fresh"));
      old.replaceWith(fresh);
    }
    applyFilter();
  }

  function removeProduct(id) {
    products = products.filter((p) => p.id !== id);
    const old = rowOf(id);
    if (old) old.remove();
    for (const li of [...matchList.children]) if (li.dataset.productId === id) li.remove();
    applyFilter();
  }

  // Text search over the loaded products' ids and titles.
  filterInput.addEventListener("input", applyFilter);
  function applyFilter() {
    const q = filterInput.value.trim().toLowerCase();
    let shown = 0;
    for (const li of productList.children) {
      const p = products.find((x) => x.id === li.dataset.productId);
      const hit = !q || (p && (p.id.toLowerCase().includes(q) || p.title.toLowerCase().includes(q)));
      li.hidden = !hit;
      if (hit) shown++;
    }
    showListStatus(q, shown);
  }

  function showListStatus(q = filterInput.value.trim(), shown = null) {
    const loaded = products.length;
    const of = total !== null && total > loaded ? ` of ${total}` : "";
    const more = cursor ? "; load more to search the rest" : "";
    if (q) {
      listStatus.textContent = `${shown} of ${loaded} loaded products match “${q}”${more}.`;
    } else {
      listStatus.textContent = loaded
        ? `${loaded}${of} product${loaded === 1 && !of ? "" : "s"} loaded.`
        : "No products yet: add one above, or import a file.";
    }
  }

  // Product images need the key: fetched as blobs, shown from object URLs (kept per path).
  function showImage(img, productId, imageId) {
    const path = imagePath(productId, imageId);
    let url = thumbs.get(path);
    if (!url) {
      url = fetch(path, { headers: authHeaders() })
        .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(String(r.status)))))
        .then((b) => URL.createObjectURL(b));
      url.catch(() => thumbs.delete(path));
      thumbs.set(path, url);
    }
    url.then((u) => { img.src = u; }, () => { img.alt = "image unavailable"; });
  }

  // --- find by photo ---------------------------------------------------------------------------

  photoInput.addEventListener("change", () => {
    const f = photoInput.files && photoInput.files[0];
    photoInput.value = "";
    if (f) searchPhoto(f);
  });

  async function searchPhoto(file) {
    if (!isImage(file)) return;
    clearMessages();
    const body = new FormData();
    body.append("image", file, file.name || "photo");
    body.append("options", new Blob([JSON.stringify({ merchant, k: 10 })], { type: "application/json" }));
    const r = await attempt(() => api("POST", "/v1/search", { body }));
    if (!r) return;
    const results = r.json.results || [];
    $("matches-photo").textContent = file.name || "the photo";
    matchList.replaceChildren(...results.map((m) => row({
      id: m.product_id, title: m.title, tags: m.tags, images: [{ id: m.image_id }],
    }, m.score)));
    matches.hidden = false;
    say(`${results.length} product${results.length === 1 ? "" : "s"} of ${merchant} match the photo, best first.`);
    $("matches-heading").scrollIntoView({ block: "nearest" });
  }

  function clearPhotoSearch() {
    matches.hidden = true;
    matchList.replaceChildren();
  }
  $("clear-matches").addEventListener("click", () => { clearPhotoSearch(); filterInput.focus(); });

  // --- create ----------------------------------------------------------------------------------

  newImages.addEventListener("change", () => {
    addNewFiles([...newImages.files]);
    newImages.value = "";
  });

  function addNewFiles(files) {
    for (const f of files) if (isImage(f)) newFiles.push(f);
    renderPreviews();
  }

  function renderPreviews() {
    for (const img of newPreviews.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    newPreviews.replaceChildren(...newFiles.map((f, i) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = URL.createObjectURL(f);
      img.alt = "";
      const name = document.createElement("span");
      name.className = "small";
      name.textContent = `${f.name} (${formatBytes(f.size)})`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "button secondary small-button";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${f.name}`);
      remove.addEventListener("click", () => { newFiles.splice(i, 1); renderPreviews(); newImages.focus(); });
      li.append(img, name, remove);
      return li;
    }));
  }

  createForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearMessages();
    const fields = productFields("new");
    if (!fields) return;
    const product = { id: $("new-id").value.trim(), ...fields };
    const body = new FormData();
    body.append("product", new Blob([JSON.stringify(product)], { type: "application/json" }));
    for (const f of newFiles) body.append("image", f, f.name);
    const button = $("create-button");
    button.disabled = true;
    const r = await attempt(() => api("POST", `${merchantPath()}/products`, { body }));
    button.disabled = false;
    if (!r) return;
    const p = r.json;
    createForm.reset();
    newFiles = [];
    renderPreviews();
    products.unshift(p);
    const li = row(p);
    li.classList.add("fresh");
    productList.prepend(li);
    applyFilter();
    const unknown = p.unknown_to_model && p.unknown_to_model.length
      ? ` Tags the model does not know (stored, filterable, not embedded): ${p.unknown_to_model.join(", ")}.` : "";
    say(`Created ${p.id} with ${p.images.length} image${p.images.length === 1 ? "" : "s"}; it is searchable now.${unknown}`);
    loadStats();
  });

  // The title, tags and attributes of a form ("new" or "edit"); null (and an error) when the
  // attributes are not a JSON object.
  function productFields(prefix) {
    const attrText = $(`${prefix}-attributes`).value.trim();
    let attributes = {};
    if (attrText) {
      try {
        attributes = JSON.parse(attrText);
      } catch (err) {
        const box = prefix === "edit" ? editError : errorBox;
        fill(box, { code: "malformed_json", message: `Attributes: not JSON (${err.message}).` });
        $(`${prefix}-attributes`).focus();
        return null;
      }
    }
    return {
      title: $(`${prefix}-title`).value.trim(),
      tags: splitTags($(`${prefix}-tags`).value),
      attributes,
    };
  }

  function splitTags(text) {
    return text.split(",").map((t) => t.trim()).filter(Boolean);
  }

  // --- edit ------------------------------------------------------------------------------------

  async function openEditor(id, opener) {
    clearMessages();
    const r = await attempt(() => api("GET", productPath(id)));
    if (!r) return;
    editing = { product: r.json, etag: r.etag, opener };
    editError.hidden = true;
    editStatus.textContent = "";
    fillEditor();
    if (!editor.open) editor.showModal();
    $("edit-title").focus();
  }

  function fillEditor() {
    const p = editing.product;
    $("edit-id").textContent = p.id;
    $("edit-version").textContent = `Version ${p.version}, changed ${new Date(p.updated_at).toLocaleString()}.`;
    $("edit-title").value = p.title;
    $("edit-tags").value = p.tags.join(", ");
    $("edit-attributes").value = Object.keys(p.attributes || {}).length ? JSON.stringify(p.attributes) : "";
    editImages.replaceChildren(...p.images.map((im, i) => {
      const li = document.createElement("li");
      li.dataset.imageId = String(im.id);
      const img = document.createElement("img");
      img.alt = `Image ${i + 1} of ${p.title}`;
      showImage(img, p.id, im.id);
      const meta = document.createElement("span");
      meta.className = "small";
      meta.textContent = `${im.width}×${im.height} ${im.format} · ${formatBytes(im.bytes)}`;
      const del = document.createElement("button");
      del.type = "button";
      del.className = "button danger small-button";
      del.textContent = "Delete";
      del.setAttribute("aria-label", `Delete image ${i + 1}`);
      del.addEventListener("click", () => deleteImage(im.id));
      li.append(img, meta, del);
      return li;
    }));
  }

  // A write to the product being edited, with If-Match. A 412 reloads the product and says so.
  async function editWrite(fn, done) {
    editError.hidden = true;
    editStatus.textContent = "";
    try {
      const r = await fn(editing.etag);
      if (r.json) {
        editing.product = r.json;
        editing.etag = r.etag;
        replaceProduct(r.json);
        fillEditor();
      }
      editStatus.textContent = done(r);
      return r;
    } catch (err) {
      fill(editError, err);
      if (err.code === "version_conflict") {
        const fresh = await attempt(() => api("GET", productPath(editing.product.id)), editError);
        if (fresh) {
          editing.product = fresh.json;
          editing.etag = fresh.etag;
          replaceProduct(fresh.json);
          fillEditor();
          editError.append(` Someone else changed this product: version ${fresh.json.version} is loaded below. Make your change again.`);
        }
      } else if (err.code === "product_not_found") {
        editError.append(" It was deleted meanwhile.");
        removeProduct(editing.product.id);
      }
      return null;
    }
  }

  editForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const fields = productFields("edit");
    if (!fields) return;
    const p = editing.product;
    const patch = {};
    if (fields.title !== p.title) patch.title = fields.title;
    if ([...new Set(fields.tags)].sort().join("\n") !== p.tags.join("\n")) patch.tags = fields.tags;
    if (JSON.stringify(fields.attributes) !== JSON.stringify(p.attributes || {})) patch.attributes = fields.attributes;
    if (!Object.keys(patch).length) {
      editStatus.textContent = "Nothing changed.";
      return;
    }
    await editWrite((etag) => api("PATCH", productPath(p.id), {
      body: JSON.stringify(patch), headers: { "content-type": "application/json" }, ifMatch: etag,
    }), (r) => `Saved: version ${r.json.version}${patch.tags ? " (images re-embedded with the new tags)" : ""}.`);
  });

  $("edit-add").addEventListener("change", () => {
    const files = [...$("edit-add").files];
    $("edit-add").value = "";
    addImages(files);
  });

  async function addImages(files) {
    files = files.filter(isImage);
    if (!files.length || !editing) return;
    const body = new FormData();
    for (const f of files) body.append("image", f, f.name);
    await editWrite((etag) => api("POST", `${productPath(editing.product.id)}/images`, { body, ifMatch: etag }),
      (r) => `Added ${files.length} image${files.length === 1 ? "" : "s"}: ${r.json.images.length} now.`);
  }

  async function deleteImage(imageId) {
    await editWrite((etag) => api("DELETE", imagePath(editing.product.id, imageId), { ifMatch: etag }),
      (r) => `Image deleted: ${r.json.images.length} left.`);
    // Keep the keyboard focus in the images after the button went away.
    if (editor.open && !editImages.contains(document.activeElement)) $("edit-add").focus();
  }

  $("edit-delete").addEventListener("click", async () => {
    const id = editing.product.id;
    if (!window.confirm(`Delete ${id} and its images? It leaves search results at once.`)) return;
    const r = await editWrite((etag) => api("DELETE", productPath(id), { ifMatch: etag }), () => "");
    if (!r) return;
    editing.opener = null;
    editor.close();
    removeProduct(id);
    say(`Deleted ${id}.`);
    loadStats();
  });

  $("edit-close").addEventListener("click", () => editor.close());
  editor.addEventListener("close", () => {
    const opener = editing && editing.opener;
    editing = null;
    // Back to where the editor was opened from (that row was re-rendered: find its button).
    const li = opener && opener.closest("li") && rowOf(opener.closest("li").dataset.productId);
    const target = (opener && opener.isConnected && opener) || (li && li.querySelector(".pedit")) || $("catalogue-heading");
    target.focus();
  });

  // --- import ----------------------------------------------------------------------------------

  importFile.addEventListener("change", () => {
    const f = importFile.files && importFile.files[0];
    $("import-file-name").textContent = f ? `${f.name} (${formatBytes(f.size)})` : "No file chosen.";
  });

  importForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearMessages();
    const file = importFile.files && importFile.files[0];
    if (!file) {
      showError({ message: "Choose a CSV or JSONL file first." });
      importFile.focus();
      return;
    }
    const format = importFormat.value;
    const jsonl = format === "jsonl" || (!format && /\.(jsonl|ndjson)$/i.test(file.name));
    const q = format ? `?format=${e(format)}` : "";
    const button = $("import-button");
    button.disabled = true;
    const r = await attempt(() => api("POST", `${merchantPath()}/imports${q}`, {
      body: file, headers: { "content-type": jsonl ? "application/x-ndjson" : "text/csv" },
    }));
    button.disabled = false;
    if (!r) return;
    say(`Import ${r.json.id} started from ${file.name}.`);
    importForm.reset();
    $("import-file-name").textContent = "No file chosen.";
    watch(r.json);
    loadImports();
  });

  const active = (job) => job.status === "queued" || job.status === "running";

  function watch(job) {
    stopWatching();
    watched = { id: String(job.id), timer: null };
    showJob(job);
    if (active(job)) schedule();
  }

  function schedule() {
    const w = watched;
    w.timer = setTimeout(async () => {
      let job;
      try {
        job = (await api("GET", `${merchantPath()}/imports/${e(w.id)}`)).json;
      } catch (err) {
        if (watched === w) { showError(err); watched = null; }
        return;
      }
      if (watched !== w) return;
      showJob(job);
      if (active(job)) {
        schedule();
      } else {
        watched = null;
        say(`Import ${job.id} ${job.status}: ${counts(job)}.`);
        loadStats();
        reloadList();
        loadImports();
      }
    }, POLL_MS);
  }

  function stopWatching() {
    if (watched && watched.timer) clearTimeout(watched.timer);
    watched = null;
  }

  function counts(j) {
    return `${j.created} created, ${j.updated} updated, ${j.unchanged} unchanged, ${j.failed} failed`;
  }

  function showJob(job) {
    jobBox.hidden = false;
    jobBox.dataset.status = job.status;
    $("job-id").textContent = String(job.id);
    const badge = $("job-status");
    badge.textContent = job.status + (job.cancel_requested && active(job) ? " (cancelling)" : "");
    badge.dataset.status = job.status;
    const bar = $("job-progress");
    bar.max = Math.max(job.products || 0, 1);
    bar.value = job.products ? job.products_done : (active(job) ? 0 : 1);
    bar.setAttribute("aria-valuetext", `${job.products_done} of ${job.products} products`);
    $("job-counts").textContent = `${job.products_done} of ${job.products} products (${job.rows} rows, ` +
      `${job.images} images): ${counts(job)}` + (job.error_count ? `; ${job.error_count} errors` : "") + "." +
      (job.message ? ` ${job.message}` : "");
    const cancel = $("job-cancel");
    cancel.hidden = !active(job) || job.cancel_requested;
    const errs = job.errors || [];
    jobErrors.hidden = errs.length === 0;
    jobErrors.tBodies[0].replaceChildren(...errs.map((er) => {
      const tr = document.createElement("tr");
      for (const v of [er.row, er.product_id, er.code, er.message]) {
        const td = document.createElement("td");
        td.textContent = v === null || v === undefined ? "–" : String(v);
        tr.append(td);
      }
      return tr;
    }));
    const extra = job.error_count > errs.length ? ` (the first ${errs.length} of ${job.error_count})` : "";
    jobErrors.caption.textContent = `Rows that failed${extra}`;
  }

  $("job-cancel").addEventListener("click", async () => {
    if (!watched) return;
    const w = watched;
    const r = await attempt(() => api("POST", `${merchantPath()}/imports/${e(w.id)}/cancel`));
    if (r && watched === w) showJob(r.json);
  });

  async function loadImports() {
    let jobs;
    try {
      jobs = (await api("GET", `${merchantPath()}/imports`)).json.imports || [];
    } catch (err) {
      importsList.replaceChildren(Object.assign(document.createElement("li"), {
        className: "muted", textContent: `Imports unavailable (${err.code}: ${err.message})`,
      }));
      return;
    }
    if (!jobs.length) {
      importsList.replaceChildren(Object.assign(document.createElement("li"), {
        className: "muted", textContent: "None yet.",
      }));
      return;
    }
    importsList.replaceChildren(...jobs.slice(0, 5).map((j) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "linkish";
      b.textContent = `Import ${j.id}`;
      b.setAttribute("aria-label", `Show import ${j.id}`);
      b.addEventListener("click", () => watch(j));
      const when = j.created_at ? new Date(j.created_at).toLocaleString() : "";
      li.append(b, ` · ${j.status} · ${j.products_done} of ${j.products} products · ${when}`);
      return li;
    }));
  }

  // --- files: picked or dropped ----------------------------------------------------------------

  // Any image goes to the API, which says which formats it takes; other files stop here.
  function isImage(f) {
    if (f.type ? f.type.startsWith("image/") : /\.(jpe?g|png|webp|hei[cf])$/i.test(f.name || "")) return true;
    showError({ message: `“${f.name || "that file"}” is not an image.` });
    return false;
  }

  const hasFiles = (ev) => ev.dataTransfer && [...ev.dataTransfer.types].includes("Files");
  const onDrop = {
    new: (files) => addNewFiles(files),
    photo: (files) => files[0] && searchPhoto(files[0]),
    edit: (files) => addImages(files),
  };
  for (const zone of document.querySelectorAll("[data-drop]")) {
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (ev) => {
        if (!hasFiles(ev)) return;
        ev.preventDefault();
        zone.classList.add("over");
      });
    }
    zone.addEventListener("dragleave", (ev) => {
      if (!zone.contains(ev.relatedTarget)) zone.classList.remove("over");
    });
    zone.addEventListener("drop", (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      ev.stopPropagation();
      zone.classList.remove("over");
      onDrop[zone.dataset.drop]([...ev.dataTransfer.files]);
    });
  }
  // A drop that misses a zone must not make the browser open the file instead of the console.
  for (const type of ["dragover", "drop"]) {
    document.addEventListener(type, (ev) => { if (hasFiles(ev)) ev.preventDefault(); });
  }

  function formatBytes(n) {
    return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(0)} kB` : `${(n / 1048576).toFixed(1)} MB`;
  }

  if (keyInput.value.trim()) signIn(); else keyInput.focus();
})();
