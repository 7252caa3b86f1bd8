// Headless Chromium for the page runners (run-page.mjs, serve-page.mjs): the system Chromium
// (CHROMIUM env var, default /usr/bin/chromium) through playwright-core, with a fresh profile
// and no network side traffic; CHROMIUM_EXTRA_ARGS adds flags (e.g. for WebGPU).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

/** A persistent context on the profile folder `profile` (the caller makes and removes it). */
export function launchChromium(profile, timeout) {
  return chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...(process.env.CHROMIUM_EXTRA_ARGS || '').split(' ').filter(Boolean)],
    viewport: { width: 1240, height: 900 },
    deviceScaleFactor: 1,
    timeout,
  });
}

/**
 * Run `body(context)` in Chromium on a fresh profile, then close the browser and remove the
 * profile whatever happened. Resolves to an exit code: 0, or 1 after printing the error with
 * `name` in front.
 */
export async function withChromium(name, timeout, body) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'edgetrain-chromium-'));
  let context;
  try {
    context = await launchChromium(profile, timeout);
    await body(context);
    return 0;
  } catch (e) {
    console.error(`${name}: ${e.stack || e}`);
    return 1;
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}
