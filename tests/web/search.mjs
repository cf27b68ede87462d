// The web page's browser test: the real server, the shipped bundle, Debian's Chromium driven by
// Playwright (playwright-core; it never downloads a browser).
//
//   node tests/web/search.mjs          (scripts/test.sh runs it after the cargo tests)
//
// It starts `target/debug/snapshop serve` (SNAPSHOP_BIN to use another build) on a free port with
// a temporary data directory and `--bundle models/default`, uploads products from
// tests/fixtures/subset/ through the HTTP API, then on `/`: searches with a street photo of one of
// them and sees it first, sees the timings and the product images, toggles the attention overlay
// (mouse and keyboard) and checks the canvas is drawn, gets an API error shown, and checks the
// phone-width layout. Screenshots go to docs/img/ (SNAPSHOP_WEB_SCREENSHOTS to put them elsewhere).
// Ends with `web: N passed, N failed[, N skipped]` and exits non-zero on any failure.

import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import {
  CHROMIUM, SHOTS, asAdmin, cleanups, log, check, assert, fixtureProducts, titleOf, startServer, upload, shot,
  run,
} from "./lib.mjs";

const MERCHANT = "acme";
let searchKey = null;
const PRODUCTS = 12; // uploaded, in manifest order, among those with street photos
const QUERY = 0; // the product whose street photo is searched with
const WATCHDOG_MS = 120_000;

// --- the test --------------------------------------------------------------------------------

async function main() {
  const products = fixtureProducts();
  assert(products.length === PRODUCTS, `the fixture subset has ${products.length} products with street photos`);
  const query = products[QUERY];

  let server, context, page;
  await check("the server starts and is ready", async () => {
    server = await startServer();
    log(`server at ${server.base}`);
  });
  await check(`${PRODUCTS} products are uploaded through the API`, async () => {
    for (const p of products) await upload(server.base, p);
    log(`uploaded ${products.reduce((n, p) => n + p.shop.length, 0)} images`);
    const r = await fetch(`${server.base}/v1/keys`, {
      method: "POST",
      headers: { ...asAdmin, "content-type": "application/json" },
      body: JSON.stringify({ kind: "search", merchant: MERCHANT, label: "web test" }),
    });
    assert(r.status === 201, `creating a search key: ${r.status}`);
    searchKey = (await r.json()).key;
  });

  await check("the page loads under its content security policy, with its assets", async () => {
    const profile = mkdtempSync(join(tmpdir(), "snapshop-chromium-"));
    cleanups.push(() => rmSync(profile, { recursive: true, force: true }));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"],
      viewport: { width: 1280, height: 900 },
      deviceScaleFactor: 1,
      colorScheme: "light",
      reducedMotion: "reduce",
    });
    cleanups.push(() => context.close());
    page = context.pages()[0] || (await context.newPage());
    const problems = [];
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
    page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()}`));
    page.problems = problems;
    const response = await page.goto(`${server.base}/`);
    assert(response.ok(), `GET / answered ${response.status()}`);
    const csp = response.headers()["content-security-policy"] || "";
    assert(csp.includes("default-src 'none'") && csp.includes("script-src 'self'"), `CSP: ${csp}`);
    assert(await page.title() === "snapshop · search by photo", `title: ${await page.title()}`);
    // The script ran (it marks the body) and the style sheet applied (the file inputs are hidden).
    await page.waitForSelector("body[data-state=idle]", { timeout: 5000 });
    const inputWidth = await page.$eval("#photo", (e) => e.getBoundingClientRect().width);
    assert(inputWidth <= 1, "app.css did not apply");
    assert(problems.length === 0, problems.join("\n"));
  });

  await check("without a key the page shows the API's unauthenticated error", async () => {
    await page.setInputFiles("#photo", query.user[0]);
    await page.waitForSelector("#error:not([hidden])", { timeout: 20_000 });
    const text = await page.textContent("#error");
    assert(text.includes("unauthenticated"), `error box: ${text}`);
    page.problems.length = 0; // the browser logs the 401 itself
  });

  await check("a street photo finds its product first, with images, tags, scores and timings", async () => {
    await page.fill("#key", searchKey);
    await page.dispatchEvent("#key", "change");
    await page.fill("#merchant", MERCHANT);
    await page.fill("#k", "8");
    await page.setInputFiles("#photo", query.user[0]); // choosing a photo starts the search
    await page.waitForSelector("body[data-state=done]", { timeout: 20_000 });
    const cards = await page.$$eval("#results .card", (cs) => cs.map((c) => ({
      id: c.dataset.productId,
      title: c.querySelector(".title").textContent,
      tags: [...c.querySelectorAll(".tags li")].map((t) => t.textContent),
      score: c.querySelector(".score strong").textContent,
    })));
    assert(cards.length === 8, `${cards.length} results`);
    assert(cards[0].id === query.id, `first is ${cards[0].id}, not ${query.id}: ${cards.map((c) => c.id)}`);
    assert(cards[0].title.includes(titleOf(query)), `title ${cards[0].title}`);
    assert(cards[0].tags.join() === [...query.tags].sort().join(), `tags ${cards[0].tags}`);
    assert(cards.every((c) => /^-?\d\.\d{3}$/.test(c.score)), `scores ${cards.map((c) => c.score)}`);
    const timings = await page.$$eval("#timings div", (ds) => ds.map((d) => [
      d.querySelector("dt").textContent, d.querySelector("dd").textContent]));
    assert(timings.length === 5 && timings.every(([, v]) => /^\d+(\.\d+)? ms$/.test(v)), `timings ${timings}`);
    // Every product image came from the image route and decoded.
    await page.waitForFunction(() => [...document.querySelectorAll("#results .thumb img")]
      .every((i) => i.complete && i.naturalWidth > 0), null, { timeout: 10_000 });
    assert(await page.$eval("#status", (e) => e.textContent.startsWith("8 results")), "status line");
    log(`results: ${cards.map((c) => `${c.id} ${c.score}`).join(", ")}; timings ${timings.map((t) => t.join(" ")).join(", ")}`);
  });

  await check("screenshot web-search.png", async () => {
    mkdirSync(SHOTS, { recursive: true });
    assert(await page.isHidden("#legend"), "a legend without an overlay");
    await shot(page, "web-search.png");
  });

  const overlayPixels = () => page.$eval("#overlay", (c) => {
    if (!c.width || !c.height) return { covered: 0, distinct: 0, total: 0 };
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let covered = 0;
    const colours = new Set();
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3] > 0) covered++;
      if (i % 64 === 0) colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    }
    return { covered, distinct: colours.size, total: d.length / 4 };
  });

  await check("the attention toggle draws the heatmap over the photo (mouse)", async () => {
    const toggle = page.locator("#results .card").first().locator(".toggle");
    assert(await toggle.getAttribute("aria-pressed") === "false", "pressed before the click");
    await toggle.click();
    assert(await toggle.getAttribute("aria-pressed") === "true", "not pressed after the click");
    await page.waitForSelector("#overlay[data-drawn=true]", { timeout: 5000 });
    const px = await overlayPixels();
    const img = await page.$eval("#query-img", (i) => [Math.round(i.getBoundingClientRect().width), Math.round(i.getBoundingClientRect().height)]);
    const canvas = await page.$eval("#overlay", (c) => [c.width, c.height]);
    assert(canvas[0] === img[0] && canvas[1] === img[1], `canvas ${canvas} over a photo of ${img}`);
    assert(px.covered === px.total, `${px.covered} of ${px.total} pixels drawn`);
    assert(px.distinct > 20, `only ${px.distinct} colours: not a heatmap`);
    assert(await page.isVisible("#legend"), "no legend");
    log(`overlay ${canvas[0]}x${canvas[1]}, ${px.distinct} colours sampled`);
  });

  await check("screenshot web-search-attention.png", async () => {
    await shot(page, "web-search-attention.png");
  });

  await check("the keyboard switches the overlay to another result and Escape hides it", async () => {
    const second = page.locator("#results .card").nth(1).locator(".toggle");
    await second.focus();
    await page.keyboard.press("Enter");
    assert(await second.getAttribute("aria-pressed") === "true", "Enter did not press it");
    const first = page.locator("#results .card").first().locator(".toggle");
    assert(await first.getAttribute("aria-pressed") === "false", "two overlays at once");
    const caption = await page.textContent("#overlay-caption");
    const title = await page.locator("#results .card").nth(1).locator(".title").textContent();
    assert(caption.includes(title.replace(/^\d+\.\s*/, "")), `caption: ${caption}`);
    assert((await overlayPixels()).covered > 0, "nothing drawn");
    await page.keyboard.press("Escape");
    assert(await second.getAttribute("aria-pressed") === "false", "Escape did not hide it");
    assert((await overlayPixels()).covered === 0, "the overlay was not cleared");
  });

  await check("an API error is shown with its code and message", async () => {
    await page.fill("#filter", "no-colon-here");
    await page.click("#search");
    await page.waitForSelector("body[data-state=error]", { timeout: 10_000 });
    const text = await page.textContent("#error");
    assert(/^invalid_filter: \S/.test(text), `error box: ${text}`);
    assert(await page.getAttribute("#error", "role") === "alert", "not an alert");
    // Chromium logs the 400 itself ("Failed to load resource"): expected here, and only here.
    page.problems.splice(0, page.problems.length,
      ...page.problems.filter((m) => !/status of 400/.test(m)));
    await page.fill("#filter", query.tags.find((t) => t.startsWith("category:")));
    await page.press("#filter", "Enter"); // the form submits from the keyboard
    await page.waitForSelector("body[data-state=done]", { timeout: 20_000 });
    assert(await page.isHidden("#error"), "the error stayed");
    const first = await page.$eval("#results .card", (c) => c.dataset.productId);
    assert(first === query.id, `filtered search: first is ${first}`);
  });

  await check("the page fits a phone-width screen", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(100);
    const { scroll, width } = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth, width: window.innerWidth }));
    assert(scroll <= width, `horizontal scroll: ${scroll} > ${width}`);
    const cols = await page.$eval("#results", (g) => getComputedStyle(g).gridTemplateColumns.split(" ").length);
    assert(cols === 2, `${cols} columns at 390 px`);
    // The photo is above the results here: showing a result's attention brings it into view.
    const toggle = page.locator("#results .card").first().locator(".toggle");
    await toggle.scrollIntoViewIfNeeded();
    await toggle.click();
    await page.waitForSelector("#overlay[data-drawn=true]", { timeout: 5000 });
    const top = await page.$eval("#query-figure", (f) => f.getBoundingClientRect().top);
    assert(top > -2 && top < 844, `the photo is not in view (top ${top})`);
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await page.screenshot({ path: join(SHOTS, "web-search-phone.png") });
    assert(page.problems.length === 0, page.problems.join("\n"));
  });

  await check("the server stops cleanly", async () => {
    await context.close();
    await server.stop();
    const { code, signal } = await server.exited;
    assert(code === 0, `the server exited with ${code ?? signal}`);
  });
}

run(main, WATCHDOG_MS);
