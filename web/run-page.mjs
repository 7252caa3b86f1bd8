// Open an edgetrain web page in headless Chromium, wait for window.edgetrainResult, screenshot.
//
//   node web/run-page.mjs URL SCREENSHOT.png [TIMEOUT_MS]
//
// Prints the result as JSON on stdout; browser console and page errors go to stderr. Uses the
// system Chromium (CHROMIUM env var, default /usr/bin/chromium) through playwright-core, with a
// fresh profile and no network side traffic (chromium.mjs); CHROMIUM_EXTRA_ARGS adds flags (e.g.
// for WebGPU).
// The result also lists Content-Security-Policy violations (result.csp_violations: the page's
// securitypolicyviolation events and the browser's "Content Security Policy" console reports)
// and, if RUN_PAGE_PROBE holds a JavaScript expression, its value in the page (result.probe);
// result.workers lists the URLs of the page's web workers (onnxruntime-web's wasm threads).
// RUN_PAGE_FILES (JSON: {"#input-selector": path or [paths]}) gives files to the page's file
// inputs, as a user choosing them does, once the page sets window.edgetrainReady; a path to a
// folder goes to an <input webkitdirectory>. RUN_PAGE_DROP (JSON: [paths]) drops those files on
// the page (a drop event carrying them, as a user dragging files onto it).

import fs from 'node:fs';
import path from 'node:path';
import { withChromium } from './chromium.mjs';

const [url, screenshot, timeoutArg] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node run-page.mjs URL SCREENSHOT.png [TIMEOUT_MS]');
  process.exit(2);
}
const timeout = Number(timeoutArg || 60000);

const code = await withChromium('run-page', timeout, async (context) => {
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
  if (process.env.RUN_PAGE_FILES || process.env.RUN_PAGE_DROP) {
    await page.waitForFunction(() => window.edgetrainReady || window.edgetrainResult !== undefined,
      null, { timeout });
    for (const [selector, files] of Object.entries(JSON.parse(process.env.RUN_PAGE_FILES || '{}'))) {
      await page.setInputFiles(selector, files);
    }
    const drop = JSON.parse(process.env.RUN_PAGE_DROP || '[]').map((p) => ({
      name: path.basename(p), b64: fs.readFileSync(p).toString('base64'),
      type: /\.png$/i.test(p) ? 'image/png' : /\.csv$/i.test(p) ? 'text/csv' : '' }));
    if (drop.length) {
      await page.evaluate((files) => {
        const dt = new DataTransfer();
        for (const f of files) {
          const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
          dt.items.add(new File([bytes], f.name, { type: f.type }));
        }
        document.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
      }, drop);
    }
  }
  await page.waitForFunction(() => window.edgetrainResult !== undefined, null, { timeout });
  const result = await page.evaluate(() => window.edgetrainResult);
  result.crossOriginIsolated = await page.evaluate(() => window.crossOriginIsolated);
  result.userAgent = await page.evaluate(() => navigator.userAgent);
  result.workers = page.workers().map((w) => w.url());
  if (process.env.RUN_PAGE_PROBE) result.probe = await page.evaluate(process.env.RUN_PAGE_PROBE);
  result.csp_violations = [...await page.evaluate(() => window.__cspViolations), ...cspReports];
  await page.screenshot({ path: screenshot, fullPage: true });
  process.stdout.write(JSON.stringify(result));
});
process.exit(code);
