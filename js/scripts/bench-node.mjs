// The onnxruntime-node peer of the benchmark (benchmarks/peers/ort_node_worker.py): load an
// `edgetrain export-web` folder with the package's Node entry and onnxruntime-node (CPU), then
// answer commands (bench-jobs.mjs), one JSON line on stdin each, one JSON line on stdout per reply.
//
//   node scripts/bench-node.mjs SITE [THREADS]
//
// The first line out is the hello: {ok, versions, import_ms (import onnxruntime-node and the
// package), load_ms (load the export: sessions created, state read), providers, rss_mb,
// peak_rss_mb}. THREADS (optional) sets onnxruntime's intra-op threads; by default onnxruntime
// picks them. Besides bench-jobs.mjs's commands: 'stats' → {ok, rss_mb, peak_rss_mb}; 'quit'.

import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
console.log = console.error;  // stdout carries the protocol only

function memory() {
  return { rss_mb: process.memoryUsage().rss / 2 ** 20,
    peak_rss_mb: process.resourceUsage().maxRSS / 1024 };
}

const [site, threads] = process.argv.slice(2);
let m;
let handle;
try {
  if (!site) throw new Error('usage: node scripts/bench-node.mjs SITE [THREADS]');
  const t0 = performance.now();
  const ort = await import('onnxruntime-node');
  const { load } = await import('edgetrain');
  const { BATCHES, benchBatches, commands } = await import('./bench-jobs.mjs');
  const t1 = performance.now();
  const sessionOptions = threads ? { intraOpNumThreads: Number(threads) } : {};
  m = await load(site, { ort, store: null, sessionOptions });
  const t2 = performance.now();
  const batches = benchBatches(fs.readFileSync(path.join(site, BATCHES.json), 'utf8'),
    new Uint8Array(fs.readFileSync(path.join(site, BATCHES.bin))));
  handle = commands(m, batches);
  out({ ok: true, versions: { ...ort.env.versions, node: process.version },
    import_ms: t1 - t0, load_ms: t2 - t1, providers: m.providers.train,
    threads: threads ? Number(threads) : null, ...memory() });
} catch (e) {
  out({ ok: false, error: String(e && e.message), stack: e && e.stack });
  process.exit(1);
}

for await (const line of readline.createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  if (cmd.cmd === 'quit') {
    await m.release();
    out({ ok: true });
    break;
  }
  out(cmd.cmd === 'stats' ? { ok: true, ...memory() } : await handle(cmd));
}
process.exit(0);  // stdin may still be open
