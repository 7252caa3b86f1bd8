// The onnxruntime-web (wasm) column of the runtime conformance matrix (tests/test_runtimes.py),
// in a browser. tests/_js_drivers.py copies matrix.html, this module and matrix-jobs.mjs into an
// `edgetrain export-web` folder, serves it, and opens matrix.html?run=RUN in Chromium; RUN/ holds
// plan.json and batches.bin (and the checkpoints the jobs restore). The page loads the export
// with the package's browser entry (the export's edgetrain.js and its vendored onnxruntime-web,
// wasm), runs the jobs and sets window.edgetrainResult: per job the losses, the step counter
// before and after, and the checkpoint it saved as base64.

import { load } from './edgetrain.js';
import { runPlan } from './matrix-jobs.mjs';

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`cannot fetch ${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

function base64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

const status = document.getElementById('status');
try {
  const run = new URLSearchParams(location.search).get('run');
  if (!/^[A-Za-z0-9_-]+$/.test(run || '')) throw new Error('?run=NAME names the run folder');
  const plan = JSON.parse(new TextDecoder().decode(await fetchBytes(`${run}/plan.json`)));
  const bytes = await fetchBytes(`${run}/batches.bin`);
  const m = await load('./', { backend: 'wasm', store: null });
  const t0 = performance.now();
  const result = await runPlan(m, plan, bytes, {
    restore: async (model, name) => model.loadCheckpoint(
      await fetchBytes(`${run}/${encodeURIComponent(name)}`), { where: name }),
    save: async (model) => base64(await model.checkpoint()),
  });
  result.ms = performance.now() - t0;
  result.backend = m.backend;
  result.providers = m.providers.train;
  result.threads = m.ort.env.wasm.numThreads;
  await m.release();
  status.textContent = 'done';
  window.edgetrainResult = { ok: true, ...result };
} catch (e) {
  status.textContent = `error: ${e.message}`;
  window.edgetrainResult = { ok: false, error: String(e && e.message), stack: e && e.stack };
}
