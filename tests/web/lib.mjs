// What the browser tests (tests/web/*.mjs) share: the checks and their summary line, the
// fixtures, the real server on a temporary data directory, keys, uploads, Chromium and
// screenshots. Each test is its own node process, so the state here (the counts, the cleanups)
// is that one test's.
//
// A test calls `run(main)`: it runs `main`, whose `check(name, fn)` calls print `ok - …` or
// `not ok - …` (the first failure stops the test), then cleans up and prints
// `web: N passed, N failed[, N skipped]`, the line scripts/test.sh counts, and exits non-zero on
// any failure.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = process.env.SNAPSHOP_BIN || join(ROOT, "target/debug/snapshop");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const SHOTS = process.env.SNAPSHOP_WEB_SCREENSHOTS || join(ROOT, "docs/img");
export const SUBSET = join(ROOT, "tests/fixtures/subset");
// The server starts with this admin key (SNAPSHOP_ADMIN_KEY); the pages get other keys.
export const ADMIN_KEY = `sk_admin_web_${randomBytes(24).toString("hex")}`;
export const asAdmin = { Authorization: `Bearer ${ADMIN_KEY}` };

const started = Date.now();
export const checks = { passed: 0, failed: 0, skipped: 0 };
export const cleanups = [];
let serverLog = [];

export function log(line) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${line}`);
}

export class Stop extends Error {}

export async function check(name, fn) {
  try {
    await fn();
    checks.passed++;
    console.log(`ok - ${name}`);
  } catch (e) {
    checks.failed++;
    console.log(`not ok - ${name}\n  ${String(e && e.stack ? e.stack : e).split("\n").join("\n  ")}`);
    throw new Stop();
  }
}

export function assert(cond, message) {
  if (!cond) throw new Error(message);
}

// --- fixtures --------------------------------------------------------------------------------

// The first `n` products of tests/fixtures/subset/manifest.csv that have both catalogue (shop)
// and street (user) photos: { id, tags, shop: [paths], user: [paths] }.
export function fixtureProducts(n = 12) {
  const lines = readFileSync(join(SUBSET, "manifest.csv"), "utf8").trim().split("\n").slice(1);
  const byId = new Map();
  for (const line of lines) {
    const [image, id, domain, , tags] = line.split(",");
    if (!byId.has(id)) byId.set(id, { id, tags: [], shop: [], user: [] });
    const p = byId.get(id);
    if (domain === "shop") {
      p.shop.push(join(SUBSET, image));
      for (const t of (tags || "").split(";").filter(Boolean)) if (!p.tags.includes(t)) p.tags.push(t);
    } else {
      p.user.push(join(SUBSET, image));
    }
  }
  return [...byId.values()].filter((p) => p.shop.length && p.user.length).slice(0, n);
}

export function titleOf(p) {
  const tag = (k) => (p.tags.find((t) => t.startsWith(`${k}:`)) || "").split(":")[1] || "";
  const words = [tag("color"), tag("category")].filter(Boolean).join(" ") || p.id;
  const pattern = tag("pattern");
  return words[0].toUpperCase() + words.slice(1) + (pattern && pattern !== "solid" ? `, ${pattern}` : "");
}

export function mime(path) {
  return path.endsWith(".png") ? "image/png" : path.endsWith(".webp") ? "image/webp" : "image/jpeg";
}

// --- the server ------------------------------------------------------------------------------

// The server reads every SNAPSHOP_* variable as configuration (and refuses unknown keys such as
// scripts/test.sh's SNAPSHOP_REQUIRE_ORT): it gets none but the bootstrap admin key and `extra`.
export function serverEnv(extra = {}) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SNAPSHOP_")));
  env.RUST_LOG = process.env.RUST_LOG || "info,ort=warn";
  env.SNAPSHOP_ADMIN_KEY = ADMIN_KEY;
  return { ...env, ...extra };
}

// `target/debug/snapshop serve` on a free port with a temporary data directory and the shipped
// bundle, once /readyz answers. `env`: more configuration (SNAPSHOP_* variables).
export async function startServer({ env = {} } = {}) {
  assert(existsSync(BIN), `${BIN} is missing: build it first (cargo build --bin snapshop)`);
  const dataDir = mkdtempSync(join(tmpdir(), "snapshop-web-"));
  cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
  const child = spawn(BIN, [
    "serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir,
    "--bundle", join(ROOT, "models/default"), "--log-format", "json", "--intra-threads", "1",
  ], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], env: serverEnv(env) });
  const exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(t);
    }
  });
  const addr = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error("the server did not start in 60 s")), 60_000);
    exited.then(({ code, signal }) => rej(new Error(`the server exited (${code ?? signal})`)));
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on("line", (line) => {
        serverLog.push(line);
        if (serverLog.length > 200) serverLog = serverLog.slice(-200);
        const m = line.includes('"serving"') && line.match(/"addr":"([^"]+)"/);
        if (m) { clearTimeout(timer); res(m[1]); }
      });
    }
  });
  const base = `http://${addr}`;
  for (let i = 0; ; i++) {
    const r = await fetch(`${base}/readyz`).catch(() => null);
    if (r && r.ok) break;
    assert(i < 100, "/readyz never became ready");
    await new Promise((res) => setTimeout(res, 100));
  }
  return { base, stop: cleanups[cleanups.length - 1], exited };
}

// Creates fixture product `p` (its shop photos, tags, a title from them) as the admin.
export async function upload(base, p, merchant = "acme") {
  const form = new FormData();
  const product = { id: p.id, title: titleOf(p), tags: p.tags };
  form.append("product", new Blob([JSON.stringify(product)], { type: "application/json" }));
  for (const path of p.shop) {
    form.append("image", new Blob([readFileSync(path)], { type: mime(path) }), path.split("/").pop());
  }
  const r = await fetch(`${base}/v1/merchants/${merchant}/products`, { method: "POST", body: form, headers: asAdmin });
  assert(r.status === 201, `creating ${p.id}: ${r.status} ${await r.text()}`);
}

// A new key made with the admin key (`body` as for POST /v1/keys); returns its token.
export async function makeKey(base, body) {
  const r = await fetch(`${base}/v1/keys`, {
    method: "POST",
    headers: { ...asAdmin, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  assert(r.status === 201, `creating a ${body.kind} key: ${r.status} ${text}`);
  return JSON.parse(text).key;
}

// --- the browser -----------------------------------------------------------------------------

// Debian's Chromium, headless, on a fresh profile; the page's errors, console errors and failed
// requests are collected in `page.problems`.
export async function launchBrowser({ width = 1280, height = 900 } = {}) {
  const profile = mkdtempSync(join(tmpdir(), "snapshop-chromium-"));
  cleanups.push(() => rmSync(profile, { recursive: true, force: true }));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
    viewport: { width, height },
    deviceScaleFactor: 1,
    colorScheme: "light",
    reducedMotion: "reduce",
  });
  cleanups.push(() => context.close());
  const page = context.pages()[0] || (await context.newPage());
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()}`));
  page.problems = problems;
  return { context, page };
}

// A screenshot from the top of the page, with no focus ring.
export async function shot(page, name, fullPage = true) {
  await page.evaluate(() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); });
  await page.screenshot({ path: join(SHOTS, name), fullPage });
}

// --- running ---------------------------------------------------------------------------------

async function finish(code, watchdog) {
  clearTimeout(watchdog);
  for (const f of cleanups.reverse()) {
    try { await f(); } catch { /* best effort */ }
  }
  if (code !== 0 && serverLog.length) {
    console.log("--- the server's last log lines (request lines left out)");
    console.log(serverLog.filter((l) => !l.includes("finished processing request")).slice(-20).join("\n"));
  }
  log("done");
  console.log(`web: ${checks.passed} passed, ${checks.failed} failed` +
    (checks.skipped ? `, ${checks.skipped} skipped` : ""));
  process.exit(code);
}

// Runs a test's `main`, with a watchdog, and ends the process with the summary line.
export function run(main, watchdogMs = 120_000) {
  const watchdog = setTimeout(() => {
    console.log(`not ok - the test took more than ${watchdogMs / 1000} s`);
    checks.failed++;
    finish(1, watchdog);
  }, watchdogMs);
  main().then(() => finish(checks.failed ? 1 : 0, watchdog), (e) => {
    if (!(e instanceof Stop)) {
      checks.failed++;
      console.log(`not ok - ${e && e.stack ? e.stack : e}`);
    }
    finish(1, watchdog);
  });
}
