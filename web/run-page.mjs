// Open an edgetrain web page in headless Chromium, wait for window.edgetrainResult, screenshot.
//
//   node web/run-page.mjs URL SCREENSHOT.png [TIMEOUT_MS]
//
// Prints the result as JSON on stdout; browser console and page errors go to stderr. Uses the
// system Chromium (CHROMIUM env var, default /usr/bin/chromium) through playwright-core, with a
// fresh profile and no network side traffic; CHROMIUM_EXTRA_ARGS adds flags (e.g. for WebGPU).
// The result also lists Content-Security-Policy violations (result.csp_violations: the page's
// securitypolicyviolation events and the browser's "Content Security Policy" console reports)
// and, if RUN_PAGE_PROBE holds a JavaScript expression, its value in the page (result.probe);
// result.workers lists the URLs of the page's web workers (onnxruntime-web's wasm threads).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [url, screenshot, timeoutArg] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node run-page.mjs URL SCREENSHOT.png [TIMEOUT_MS]');
  process.exit(2);
}
const timeout = Number(timeoutArg || 60000);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'edgetrain-chromium-'));

let context;
let code = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...(process.env.CHROMIUM_EXTRA_ARGS || '').split(' ').filter(Boolean)],
    viewport: { width: 1240, height: 900 },
    deviceScaleFactor: 1,
    timeout,
  });
  const cspReports = [];
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__cspViolations.push(
      `${e.effectiveDirective} blocked ${e.blockedURI || 'inline'} (${e.sourceFile}:${e.lineNumber})`));
  });
  const page = context.pages()[0] || await context.newPage();
  const onConsole = (m) => {
    console.error(`[console.${m.type()}] ${m.text()}`);
    if (/Content Security Policy/i.test(m.text())) cspReports.push(m.text());
  };
  page.on('console', onConsole);
  page.on('worker', (w) => w.on('console', onConsole));
  page.on('pageerror', (e) => console.error(`[pageerror] ${e.message}`));
  page.on('response', (r) => { if (r.status() >= 400) console.error(`[http ${r.status()}] ${r.url()}`); });
  await page.goto(url, { timeout });
  await page.waitForFunction(() => window.edgetrainResult !== undefined, null, { timeout });
  const result = await page.evaluate(() => window.edgetrainResult);
  result.crossOriginIsolated = await page.evaluate(() => window.crossOriginIsolated);
  result.userAgent = await page.evaluate(() => navigator.userAgent);
  result.workers = page.workers().map((w) => w.url());
  if (process.env.RUN_PAGE_PROBE) result.probe = await page.evaluate(process.env.RUN_PAGE_PROBE);
  result.csp_violations = [...await page.evaluate(() => window.__cspViolations), ...cspReports];
  await page.screenshot({ path: screenshot, fullPage: true });
  process.stdout.write(JSON.stringify(result));
} catch (e) {
  console.error(`run-page: ${e.stack || e}`);
  code = 1;
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
