// The onnxruntime-web (wasm) peer of the benchmark (benchmarks/peers/ort_web_worker.py), in a
// browser. The worker copies bench.html, this module, bench-jobs.mjs and matrix-jobs.mjs into an
// `edgetrain export-web` folder, serves it, and opens bench.html[?threads=N] in Chromium through
// web/serve-page.mjs, which relays its commands to window.edgetrainCommand (bench-jobs.mjs).
//
// The page imports the export's vendored onnxruntime-web wasm build (timed: import_ms), loads the
// export with the package's browser entry (the export's edgetrain.js; timed: load_ms, sessions
// created and the state read), reads the batches, and sets window.edgetrainReady to its hello;
// on failure window.edgetrainResult = {ok: false, error}. ?threads=N sets onnxruntime-web's
// wasm threads; by default onnxruntime-web picks them.

import { load } from './edgetrain.js';
import { BATCHES, benchBatches, commands } from './bench-jobs.mjs';

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`cannot fetch ${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

const status = document.getElementById('status');
try {
  const threads = new URLSearchParams(location.search).get('threads');
  if (threads !== null && !/^[1-9][0-9]?$/.test(threads)) throw new Error('?threads=N, N ≥ 1');
  const text = async (url) => new TextDecoder().decode(await fetchBytes(url));
  const manifest = JSON.parse(await text('edgetrain-web.json'));
  const [json, bytes] = await Promise.all([text(BATCHES.json), fetchBytes(BATCHES.bin)]);
  const batches = benchBatches(json, bytes);
  const base = new URL('./', location.href);
  const t0 = performance.now();
  // The build load() imports: the same URL, so load() finds the module already evaluated.
  const ort = await import(new URL(manifest.onnxruntime_web.builds.wasm, base).href);
  const t1 = performance.now();
  const m = await load('./', { backend: 'wasm', store: null,
    ...(threads ? { numThreads: Number(threads) } : {}) });
  const t2 = performance.now();
  window.edgetrainCommand = commands(m, batches);
  status.textContent = 'ready';
  window.edgetrainReady = { ok: true, versions: { ...ort.env.versions }, import_ms: t1 - t0,
    load_ms: t2 - t1, backend: m.backend, providers: m.providers.train,
    threads: m.ort.env.wasm.numThreads, crossOriginIsolated: window.crossOriginIsolated,
    userAgent: navigator.userAgent };
} catch (e) {
  status.textContent = `error: ${e.message}`;
  window.edgetrainResult = { ok: false, error: String(e && e.message), stack: e && e.stack };
}
