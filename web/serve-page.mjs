// Open an edgetrain page in headless Chromium and relay commands to it (the benchmark's
// onnxruntime-web peer: benchmarks/peers/ort_web_worker.py, js/scripts/bench-page.mjs).
//
//   node web/serve-page.mjs URL [TIMEOUT_MS]
//
// The page sets window.edgetrainReady to its hello (an object) once it is ready, or
// window.edgetrainResult = {ok: false, error} when it failed, and defines
// window.edgetrainCommand(cmd) → Promise<reply>. The hello is the first line on stdout; then each
// JSON line on stdin is one command and its reply one JSON line on stdout. Answered here:
// 'stats' → {ok, pss_mb}: the proportional set size of the browser's processes (every process
// under this one; a process's shared pages are split among the processes that map them), and
// 'quit', which closes the browser. Browser console and page errors go to stderr.

import fs from 'node:fs';
import readline from 'node:readline';
import { withChromium } from './chromium.mjs';

const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

/** The ids of every process below `pid` (Linux /proc; empty elsewhere). */
function descendants(pid) {
  const found = [];
  const todo = [pid];
  while (todo.length) {
    const p = todo.pop();
    let tasks = [];
    try {
      tasks = fs.readdirSync(`/proc/${p}/task`);
    } catch { continue; }
    for (const t of tasks) {
      let children = '';
      try {
        children = fs.readFileSync(`/proc/${p}/task/${t}/children`, 'utf8');
      } catch { continue; }
      for (const c of children.split(' ').filter(Boolean)) {
        found.push(Number(c));
        todo.push(Number(c));
      }
    }
  }
  return found;
}

/** MiB: the summed PSS of the browser's processes, or null where /proc cannot tell. */
function browserPssMb() {
  let kb = 0;
  let seen = 0;
  for (const pid of descendants(process.pid)) {
    try {
      const m = /^Pss:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
      if (m) { kb += Number(m[1]); seen += 1; }
    } catch { /* exited meanwhile */ }
  }
  return seen ? kb / 1024 : null;
}

const [url, timeoutArg] = process.argv.slice(2);
if (!url) {
  console.error('usage: node serve-page.mjs URL [TIMEOUT_MS]');
  process.exit(2);
}
const timeout = Number(timeoutArg || 60000);

const code = await withChromium('serve-page', timeout, async (context) => {
  const page = context.pages()[0] || await context.newPage();
  const onConsole = (m) => console.error(`[console.${m.type()}] ${m.text()}`);
  page.on('console', onConsole);
  page.on('worker', (w) => w.on('console', onConsole));
  page.on('pageerror', (e) => console.error(`[pageerror] ${e.message}`));
  await page.goto(url, { timeout });
  await page.waitForFunction(() => window.edgetrainReady || window.edgetrainResult !== undefined,
    null, { timeout });
  const hello = await page.evaluate(() => window.edgetrainReady || window.edgetrainResult);
  out({ ...hello, pss_mb: browserPssMb() });
  if (!hello.ok) throw new Error(`the page failed: ${hello.error}`);
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    if (cmd.cmd === 'quit') break;
    out(cmd.cmd === 'stats' ? { ok: true, pss_mb: browserPssMb() }
      : await page.evaluate((c) => window.edgetrainCommand(c), cmd));
  }
});
if (code === 0) out({ ok: true });
process.exit(code);
