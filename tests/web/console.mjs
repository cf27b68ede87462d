// The merchant console's browser test: the real server, the shipped bundle, Debian's Chromium
// driven by Playwright (playwright-core; it never downloads a browser).
//
//   node tests/web/console.mjs         (scripts/test.sh runs it after tests/web/search.mjs)
//
// It starts `target/debug/snapshop serve` (SNAPSHOP_BIN to use another build) on a free port with
// a temporary data directory, `--bundle models/default` and its import root at
// tests/fixtures/subset, uploads products through the API and makes a merchant key; then on
// `/console`: signs in (a wrong key first: the API's error is shown), pages through the list by
// cursor, creates a product from the form with a photo dropped on it, edits its title and tags
// (and gets a version conflict when it changed behind its back), adds an image, finds products
// by text and by photo, deletes a product, and checks the keyboard and the phone-width layout;
// on `/` a photo search with the same key finds the product made in the console first; back on
// the console it deletes an image and runs an import to its end, errors included. Screenshots
// go to docs/img/console-*.png (SNAPSHOP_WEB_SCREENSHOTS to put them elsewhere).
// Ends with `web: N passed, N failed` and exits non-zero on any failure.

import { createHash } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { basename } from "node:path";
import {
  SHOTS, SUBSET, ADMIN_KEY, asAdmin, log, check, assert, fixtureProducts, titleOf, mime, startServer, upload,
  makeKey, launchBrowser, shot, run,
} from "./lib.mjs";

const MERCHANT = "acme";
const PAGE_SIZE = 10; // web/console.js's
const fixtures = fixtureProducts(16);
const made = fixtures[0]; // created in the console (two shop photos, one street photo)
const listed = fixtures.slice(1, 13); // uploaded through the API: more than a page
const imported = fixtures[14]; // imported from a CSV

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

// Chromium logs every 4xx itself ("Failed to load resource"): drop those of an expected status.
function expectFailed(page, status) {
  page.problems.splice(0, page.problems.length,
    ...page.problems.filter((m) => !m.includes(`status of ${status}`)));
}

// Drops files on an element the way a browser does: dragenter, dragover and drop events carrying
// a DataTransfer with the files, built in the page.
async function dropFiles(page, selector, paths) {
  const files = paths.map((p) => ({ name: basename(p), type: mime(p), b64: readFileSync(p).toString("base64") }));
  const dataTransfer = await page.evaluateHandle((fs) => {
    const dt = new DataTransfer();
    for (const f of fs) {
      const bin = atob(f.b64);
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      dt.items.add(new File([bytes], f.name, { type: f.type }));
    }
    return dt;
  }, files);
  await page.dispatchEvent(selector, "dragenter", { dataTransfer });
  await page.dispatchEvent(selector, "dragover", { dataTransfer });
  assert(await page.$eval(selector, (z) => z.classList.contains("over")), "the drop zone is not highlighted");
  await page.dispatchEvent(selector, "drop", { dataTransfer });
}

const rowIds = (page, list = "#product-list") =>
  page.$$eval(`${list} > li:not([hidden])`, (ls) => ls.map((l) => l.dataset.productId));
const editorClosed = (page) =>
  page.waitForFunction(() => !document.getElementById("editor").open, null, { timeout: 10_000 });
const idle = (page) => page.waitForSelector("body[data-busy='0']", { timeout: 30_000 });
const thumbsLoaded = (page, scope) => page.waitForFunction((s) => {
  const imgs = [...document.querySelectorAll(`${s} img`)];
  return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}, scope, { timeout: 15_000 });

async function main() {
  assert(fixtures.length === 16 && made.shop.length >= 2, "the fixture subset changed");
  let server, page, merchantKey;

  await check("the server starts with an import root and is ready", async () => {
    server = await startServer({ env: { SNAPSHOP_IMPORT__ROOT: SUBSET } });
    log(`server at ${server.base}`);
  });
  const api = async (method, path, { body, headers = {} } = {}) => {
    const r = await fetch(`${server.base}${path}`, { method, body, headers: { ...asAdmin, ...headers } });
    const text = await r.text();
    return { status: r.status, json: text ? JSON.parse(text) : null, etag: r.headers.get("etag") };
  };
  const product = (id) => api("GET", `/v1/merchants/${MERCHANT}/products/${encodeURIComponent(id)}`);

  await check(`${listed.length} products are uploaded through the API, and a merchant key made`, async () => {
    for (const p of listed) await upload(server.base, p, MERCHANT);
    merchantKey = await makeKey(server.base, { kind: "merchant", merchant: MERCHANT, label: "console test" });
  });

  await check("the console loads under its content security policy, with its assets", async () => {
    ({ page } = await launchBrowser());
    const response = await page.goto(`${server.base}/console`);
    assert(response.ok(), `GET /console answered ${response.status()}`);
    const csp = response.headers()["content-security-policy"] || "";
    assert(csp.includes("default-src 'none'") && csp.includes("script-src 'self'"), `CSP: ${csp}`);
    assert(await page.title() === "snapshop · merchant console", `title: ${await page.title()}`);
    // The script ran (it counts requests on the body) and both style sheets applied.
    await page.waitForSelector("body[data-busy]", { timeout: 5000 });
    assert(await page.$eval("#new-images", (e) => e.getBoundingClientRect().width) <= 1, "app.css did not apply");
    assert(await page.$eval("#stats", (e) => getComputedStyle(e.querySelector("dt")).display) === "inline",
      "console.css did not apply");
    assert(await page.isHidden("#workspace"), "the workspace shows before signing in");
    assert(await page.evaluate(() => document.activeElement.id) === "key", "the key field has no focus");
    assert(page.problems.length === 0, page.problems.join("\n"));
  });

  await check("a wrong key gets the API's unauthenticated error", async () => {
    await page.fill("#key", "sk_live_0000000000000000000000000000000000000000");
    await page.press("#key", "Enter"); // the form submits from the keyboard
    await page.waitForSelector("#error:not([hidden])", { timeout: 10_000 });
    const text = await page.textContent("#error");
    assert(/^unauthenticated: \S/.test(text), `error box: ${text}`);
    assert(await page.getAttribute("#error", "role") === "alert", "not an alert");
    assert(await page.isHidden("#workspace"), "signed in with a wrong key");
    expectFailed(page, 401);
  });

  await check("a search key is refused; an admin key picks the merchant", async () => {
    const searchKey = await makeKey(server.base, { kind: "search", merchant: MERCHANT });
    await page.fill("#key", searchKey);
    await page.click("#signin-button");
    await page.waitForFunction(() => document.getElementById("error").textContent.includes("search key"),
      null, { timeout: 10_000 });
    assert((await page.textContent("#error")).startsWith("forbidden: "), await page.textContent("#error"));
    assert(await page.isHidden("#workspace"), "signed in with a search key");
    await page.fill("#key", ADMIN_KEY);
    await page.fill("#merchant", "");
    await page.click("#signin-button");
    await page.waitForFunction(() => document.getElementById("whoami").textContent.includes("choose the merchant"),
      null, { timeout: 10_000 });
    assert(await page.evaluate(() => document.activeElement.id) === "merchant", "no focus on the merchant");
    assert(await page.isHidden("#workspace"), "signed in without a merchant");
    await page.fill("#merchant", MERCHANT);
    await page.press("#merchant", "Enter");
    await page.waitForSelector("body[data-signed-in=admin]", { timeout: 10_000 });
    await idle(page);
    const line = await page.textContent("#whoami");
    assert(line.startsWith("Signed in with admin key") && line.includes(`managing ${MERCHANT}`), `whoami: ${line}`);
    assert(await page.isVisible("#merchant") && await page.isHidden("#key"), "an admin keeps the merchant field");
    assert((await rowIds(page)).length === PAGE_SIZE, "the admin's list");
    await page.click("#change-key");
  });

  await check("a merchant key signs in: whoami names the merchant, the first page is listed", async () => {
    await page.fill("#key", merchantKey);
    await page.click("#signin-button");
    await page.waitForSelector("body[data-signed-in=merchant]", { timeout: 10_000 });
    await idle(page);
    assert(await page.isHidden("#error"), "the error stayed");
    const line = await page.textContent("#whoami");
    assert(line.includes("merchant key") && line.includes(MERCHANT) && line.includes("console test"), `whoami: ${line}`);
    assert(await page.inputValue("#merchant") === MERCHANT, "the merchant field");
    assert(await page.$eval("#merchant", (i) => i.readOnly), "a merchant key's merchant is editable");
    assert((await page.textContent("#stat-products")).startsWith(`${listed.length} of `), "product count");
    const ids = await rowIds(page);
    assert(ids.length === PAGE_SIZE, `${ids.length} rows on the first page`);
    assert(ids.join() === listed.slice(0, PAGE_SIZE).map((p) => p.id).join(), `order: ${ids}`);
    assert(await page.isVisible("#load-more"), "no Load more");
    await thumbsLoaded(page, "#product-list");
    // The key is kept for the next visit, under the search page's entry.
    assert(await page.evaluate(() => localStorage.getItem("snapshop.key")) === merchantKey, "the key is not kept");
    // Signed in, the key field folds away; "Change key" brings it back, Enter signs in again.
    assert(await page.isHidden("#key") && await page.isHidden("#merchant"), "the fields stay open");
    await page.click("#change-key");
    assert(await page.evaluate(() => document.activeElement.id) === "key", "Change key: no focus on the key");
    await page.press("#key", "Enter");
    await page.waitForFunction(() => document.getElementById("signin").classList.contains("compact"), null,
      { timeout: 10_000 });
    await idle(page);
    assert((await rowIds(page)).length === PAGE_SIZE, "the list after signing in again");
  });

  await check("Load more pages through the list with the API's cursor", async () => {
    await page.click("#load-more");
    await idle(page);
    const ids = await rowIds(page);
    assert(ids.join() === listed.map((p) => p.id).join(), `rows: ${ids}`);
    assert(await page.isHidden("#load-more"), "Load more on the last page");
    assert((await page.textContent("#list-status")).startsWith(`${listed.length} products loaded`),
      await page.textContent("#list-status"));
  });

  await check("a product is created from the form with a photo dropped on it", async () => {
    await page.fill("#new-id", made.id);
    await page.fill("#new-title", titleOf(made));
    await page.fill("#new-tags", made.tags.join(", "));
    await dropFiles(page, "#new-drop", [made.shop[0]]);
    assert(await page.$$eval("#new-previews li", (ls) => ls.length) === 1, "no preview of the dropped photo");
    assert(!(await page.$eval("#new-drop", (z) => z.classList.contains("over"))), "still highlighted");
    await thumbsLoaded(page, "#new-previews");
    await page.click("#create-button");
    await page.waitForSelector("#notice:not([hidden])", { timeout: 20_000 });
    await idle(page);
    const notice = await page.textContent("#notice");
    assert(notice.startsWith(`Created ${made.id} with 1 image`), `notice: ${notice}`);
    assert((await rowIds(page))[0] === made.id, "the new product is not at the top");
    assert(await page.$$eval("#new-previews li", (ls) => ls.length) === 0, "the form was not cleared");
    const p = await product(made.id);
    assert(p.status === 200 && p.json.images.length === 1, `GET: ${p.status}`);
    assert(p.json.title === titleOf(made) && p.json.tags.join() === [...made.tags].sort().join(), "fields");
    assert(p.json.images[0].sha256 === createHash("sha256").update(readFileSync(made.shop[0])).digest("hex"),
      "another image was stored");
    await thumbsLoaded(page, "#product-list");
    assert((await page.textContent("#stat-products")).startsWith(`${listed.length + 1} of `), "count");
  });

  await check("screenshot console-list.png", async () => {
    mkdirSync(SHOTS, { recursive: true });
    await shot(page, "console-list.png");
  });

  await check("a create the API refuses shows its code and message", async () => {
    await page.fill("#new-id", "no-photo");
    await page.fill("#new-title", "No photo");
    await page.click("#create-button");
    await page.waitForSelector("#error:not([hidden])", { timeout: 10_000 });
    const text = await page.textContent("#error");
    assert(/^invalid_field: \S/.test(text), `error box: ${text}`);
    expectFailed(page, 422);
    await page.fill("#new-id", "");
    await page.fill("#new-title", "");
  });

  const editButton = (id) => page.locator(`#product-list > li[data-product-id="${id}"] .pedit`);
  const newTitle = `${titleOf(made)} (edited)`;
  const newTags = [...made.tags, "season:summer"];

  await check("its title and tags are edited in the dialog, with If-Match", async () => {
    await editButton(made.id).click();
    await page.waitForSelector("#editor[open]", { timeout: 10_000 });
    assert(await page.evaluate(() => document.activeElement.id) === "edit-title", "focus is not on the title");
    assert(await page.textContent("#edit-id") === made.id, "another product");
    await page.fill("#edit-title", newTitle);
    await page.fill("#edit-tags", newTags.join(", "));
    await page.click("#edit-save");
    await page.waitForFunction(() => document.getElementById("edit-status").textContent.startsWith("Saved"),
      null, { timeout: 20_000 });
    const status = await page.textContent("#edit-status");
    assert(status.includes("version 2") && status.includes("re-embedded"), `status: ${status}`);
    const p = await product(made.id);
    assert(p.json.version === 2 && p.json.title === newTitle, `version ${p.json.version}, ${p.json.title}`);
    assert(p.json.tags.join() === [...newTags].sort().join(), `tags ${p.json.tags}`);
    const row = page.locator(`#product-list > li[data-product-id="${made.id}"]`);
    assert(await row.locator(".ptitle").textContent() === newTitle, "the row kept the old title");
    assert((await row.locator(".tags li").allTextContents()).includes("season:summer"), "the row's tags");
  });

  await check("a change made elsewhere meanwhile is a version conflict: said, and reloaded", async () => {
    const elsewhere = await api("PATCH", `/v1/merchants/${MERCHANT}/products/${made.id}`, {
      body: JSON.stringify({ attributes: { price: 49.9 } }), headers: { "content-type": "application/json" },
    });
    assert(elsewhere.status === 200 && elsewhere.json.version === 3, `PATCH: ${elsewhere.status}`);
    await page.fill("#edit-title", "A title that loses");
    await page.click("#edit-save");
    await page.waitForSelector("#edit-error:not([hidden])", { timeout: 10_000 });
    await idle(page);
    const text = await page.textContent("#edit-error");
    assert(/^version_conflict: \S/.test(text) && text.includes("version 3 is loaded"), `error: ${text}`);
    assert(await page.inputValue("#edit-title") === newTitle, "the editor was not reloaded");
    assert(await page.inputValue("#edit-attributes") === JSON.stringify({ price: 49.9 }), "attributes");
    assert((await page.textContent("#edit-version")).startsWith("Version 3"), "version line");
    assert((await product(made.id)).json.title === newTitle, "the stale write went through");
    expectFailed(page, 412);
  });

  await check("an image is added from the editor (file picker)", async () => {
    await page.setInputFiles("#edit-add", made.shop[1]);
    await page.waitForFunction(() => document.getElementById("edit-status").textContent.startsWith("Added"),
      null, { timeout: 20_000 });
    assert(await page.$$eval("#edit-images li", (ls) => ls.length) === 2, "two images listed");
    await thumbsLoaded(page, "#edit-images");
    const p = await product(made.id);
    assert(p.json.images.length === 2 && p.json.version === 4, `${p.json.images.length} images, v${p.json.version}`);
  });

  await check("screenshot console-edit.png", async () => {
    await page.screenshot({ path: `${SHOTS}/console-edit.png` });
  });

  await check("Escape closes the editor and the focus goes back to the row", async () => {
    await page.keyboard.press("Escape");
    await editorClosed(page);
    // The dialog's close event (which moves the focus) comes just after `open` turns false.
    await page.waitForFunction(() => document.activeElement && document.activeElement.classList.contains("pedit"),
      null, { timeout: 5000 }).catch(() => {});
    const focused = await page.evaluate(() => {
      const a = document.activeElement;
      return a && a.classList.contains("pedit") && a.closest("li").dataset.productId;
    });
    assert(focused === made.id, `focus on ${focused}`);
    // Tab order reaches the next row's Edit button.
    await page.keyboard.press("Tab");
    const next = await page.evaluate(() => document.activeElement.closest("li") && document.activeElement.closest("li").dataset.productId);
    assert(next === listed[0].id, `Tab went to ${next}`);
  });

  await check("the loaded list is searched by id and by title", async () => {
    await page.fill("#filter", listed[3].id);
    assert((await rowIds(page)).join() === listed[3].id, `by id: ${await rowIds(page)}`);
    await page.fill("#filter", "(EDITED)");
    assert((await rowIds(page)).join() === made.id, `by title: ${await rowIds(page)}`);
    const status = await page.textContent("#list-status");
    assert(status.startsWith(`1 of ${listed.length + 1} loaded products match`), status);
    await page.fill("#filter", "");
    assert((await rowIds(page)).length === listed.length + 1, "the filter did not clear");
  });

  await check("a street photo finds the product made in the console first (merchant-scoped search)", async () => {
    await page.setInputFiles("#photo", made.user[0]);
    await page.waitForSelector("#matches:not([hidden])", { timeout: 20_000 });
    const ids = await rowIds(page, "#match-list");
    assert(ids[0] === made.id, `first is ${ids[0]}: ${ids}`);
    const known = new Set([made.id, ...listed.map((p) => p.id)]);
    assert(ids.every((id) => known.has(id)), `a product of another merchant: ${ids}`);
    const score = await page.textContent("#match-list > li .pcount");
    assert(/^score -?\d\.\d{3}$/.test(score), `score: ${score}`);
    await thumbsLoaded(page, "#match-list");
    log(`photo search: ${ids.join(", ")}`);
    await page.click("#clear-matches");
    assert(await page.isHidden("#matches"), "the matches stayed");
  });

  await check("a product is deleted from the editor", async () => {
    const gone = listed[5].id;
    await editButton(gone).click();
    await page.waitForSelector("#editor[open]", { timeout: 10_000 });
    page.once("dialog", (d) => d.accept());
    await page.click("#edit-delete");
    await editorClosed(page);
    await idle(page);
    assert(!(await rowIds(page)).includes(gone), "the row stayed");
    assert((await page.textContent("#notice")) === `Deleted ${gone}.`, await page.textContent("#notice"));
    assert((await product(gone)).status === 404, "it is still there");
  });

  await check("on the search page, with the same key, the photo finds the console's product first", async () => {
    await page.goto(`${server.base}/`);
    await page.waitForSelector("body[data-state=idle]", { timeout: 5000 });
    assert(await page.inputValue("#key") === merchantKey, "the search page did not get the key");
    await page.setInputFiles("#photo", made.user[0]);
    await page.waitForSelector("body[data-state=done]", { timeout: 20_000 });
    const first = await page.$eval("#results .card", (c) => [c.dataset.productId, c.querySelector(".title").textContent]);
    assert(first[0] === made.id && first[1].includes(newTitle), `first: ${first}`);
  });

  await check("the console fits a phone-width screen", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${server.base}/console`);
    await page.waitForSelector("body[data-signed-in=merchant]", { timeout: 10_000 }); // the kept key
    await idle(page);
    await thumbsLoaded(page, "#product-list");
    const { scroll, width } = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth, width: window.innerWidth }));
    assert(scroll <= width, `horizontal scroll: ${scroll} > ${width}`);
    const cols = await page.$eval(".workspace", (w) => getComputedStyle(w).gridTemplateColumns.split(" ").length);
    assert(cols === 1, `${cols} columns at 390 px`);
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await page.screenshot({ path: `${SHOTS}/console-phone.png` });
    // The editor fits too.
    await editButton(listed[0].id).click();
    await page.waitForSelector("#editor[open]", { timeout: 10_000 });
    const box = await page.$eval("#editor", (d) => {
      const r = d.getBoundingClientRect();
      return { left: r.left, right: r.right, inner: d.scrollWidth - d.clientWidth };
    });
    assert(box.left >= 0 && box.right <= 390 && box.inner <= 0, `the editor: ${JSON.stringify(box)}`);
    await page.keyboard.press("Escape");
    await editorClosed(page);
    await page.setViewportSize({ width: 1280, height: 900 });
    assert(page.problems.length === 0, page.problems.join("\n"));
  });

  await check("an image is deleted from the editor (DELETE …/images/{image_id}, If-Match)", async () => {
    // After the reload the console's product, the last one made, is on the second page.
    assert(!(await rowIds(page)).includes(made.id), "paging: the last product is on the first page");
    await page.click("#load-more");
    await idle(page);
    await editButton(made.id).click();
    await page.waitForSelector("#editor[open]", { timeout: 10_000 });
    const before = (await product(made.id)).json;
    assert(before.images.length === 2, `${before.images.length} images`);
    await page.click(`#edit-images li[data-image-id="${before.images[1].id}"] button`);
    await page.waitForFunction(() => document.getElementById("edit-status").textContent.startsWith("Image deleted")
      || !document.getElementById("edit-error").hidden, null, { timeout: 20_000 });
    assert(await page.isHidden("#edit-error"), await page.textContent("#edit-error"));
    assert(await page.$$eval("#edit-images li", (ls) => ls.length) === 1, "still two images listed");
    const after = (await product(made.id)).json;
    assert(after.images.length === 1 && after.images[0].id === before.images[0].id, "the wrong image went");
    assert(after.version === before.version + 1, `version ${after.version}`);
    await page.keyboard.press("Escape");
  });

  await check("an import runs to its end: progress, counts and the failed row", async () => {
    const stored = (await product(listed[0].id)).json.images[0].sha256;
    const rel = (p) => p.slice(SUBSET.length + 1);
    const quote = (v) => `"${v.replaceAll('"', '""')}"`;
    const csv = [
      ["id", "title", "tags", "image"],
      [imported.id, titleOf(imported), imported.tags.join(","), rel(imported.shop[0])],
      ["imported-copy", "A copy, by hash", "category:coat", `sha256:${stored}`],
      ["imported-missing", "No such photo", "category:dress", "images/no-such-photo.jpg"],
    ].map((r) => r.map(quote).join(",")).join("\n") + "\n";
    await page.setInputFiles("#import-file", { name: "catalogue.csv", mimeType: "text/csv", buffer: Buffer.from(csv) });
    await page.click("#import-button");
    await page.waitForSelector("#job:not([hidden])", { timeout: 10_000 });
    assert(await page.isHidden("#error"), await page.textContent("#error"));
    let seen = new Set();
    for (let i = 0; i < 240; i++) {
      const s = await page.getAttribute("#job", "data-status");
      seen.add(s);
      if (!["queued", "running"].includes(s)) break;
      await sleep(250);
    }
    const status = await page.getAttribute("#job", "data-status");
    log(`import states seen: ${[...seen].join(" → ")}; ${await page.textContent("#job-counts")}`);
    assert(status === "done", `the import ended ${status}: ${await page.textContent("#job-counts")}`);
    const [value, max] = await page.$eval("#job-progress", (b) => [b.value, b.max]);
    assert(value === max && max === 3, `progress ${value}/${max}`);
    const counts = await page.textContent("#job-counts");
    assert(counts.startsWith("3 of 3 products") && counts.includes("2 created") && counts.includes("1 failed"), counts);
    const errs = await page.$$eval("#job-errors tbody tr", (rs) => rs.map((r) => [...r.cells].map((c) => c.textContent)));
    // Every error the API lists for the job is a row of the table, and all are the missing photo's.
    const job = (await api("GET", `/v1/merchants/${MERCHANT}/imports/${await page.textContent("#job-id")}`)).json;
    assert(errs.length === job.errors.length && errs.length >= 1, `errors: ${JSON.stringify(errs)}`);
    assert(errs.every((r, i) => r[0] === String(job.errors[i].row) && r[1] === "imported-missing"
      && r[2] === job.errors[i].code && r[3] === job.errors[i].message), `errors: ${JSON.stringify(errs)}`);
    // The list and the counts were reloaded with the imported products (the last ones made: on
    // the last page).
    await idle(page);
    assert((await page.textContent("#stat-products")).startsWith(`${listed.length + 2} of `), "count");
    while (await page.isVisible("#load-more")) {
      await page.click("#load-more");
      await idle(page);
    }
    const ids = await rowIds(page);
    assert(ids.includes(imported.id) && ids.includes("imported-copy"), `rows: ${ids}`);
    assert((await product("imported-copy")).json.images[0].sha256 === stored, "the copy by hash");
    assert((await page.$$eval("#imports li", (ls) => ls.length)) >= 1, "no recent imports");
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await page.locator("#import-panel").screenshot({ path: `${SHOTS}/console-import.png` });
    assert(page.problems.length === 0, page.problems.join("\n"));
  });

  await check("the server stops cleanly", async () => {
    await page.context().close();
    await server.stop();
    const { code, signal } = await server.exited;
    assert(code === 0, `the server exited with ${code ?? signal}`);
  });
}

run(main, 240_000);
