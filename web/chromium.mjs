// Headless Chromium for the page runners (run-page.mjs, serve-page.mjs): the system Chromium
// (CHROMIUM env var, default /usr/bin/chromium) through playwright-core, with a fresh profile
// and no network side traffic; CHROMIUM_EXTRA_ARGS adds flags (e.g. for WebGPU).

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
