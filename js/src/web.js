// edgetrain for browsers, with onnxruntime-web (wasm, or WebGPU where the browser has it).
//
//   import { load } from './edgetrain.js';          // in a web export; 'edgetrain/web' from npm
//   const m = await load('./');                     // the vendored onnxruntime-web, or { ort }
//   const { loss } = await m.run('train', { x, y });
//   await m.save('mine'); await m.restore('mine'); // IndexedDB

import { EdgetrainError, fetchSource, openExport } from './core.js';
import { idbStore } from './storage-idb.js';

export * from './core.js';
export { idbStore } from './storage-idb.js';

async function webgpuAvailable() {
  try {
    return Boolean(globalThis.navigator?.gpu && await navigator.gpu.requestAdapter());
  } catch {
    return false;
  }
}

function baseUrl(base) {
  const text = String(base);
  const href = globalThis.location?.href;
  if (!href && !/^[a-z][a-z0-9+.-]*:/i.test(text)) {
    throw new EdgetrainError(`cannot resolve ${JSON.stringify(text)} without a page: pass an ` +
      'absolute URL (in Node.js, import edgetrain/node instead)');
  }
  return new URL(text.endsWith('/') ? text : `${text}/`, href);
}

/**
 * Load an export folder by URL (relative to the page). Options: backend 'auto' (WebGPU where
 * available, else wasm) | 'wasm' | 'webgpu'; ort: an onnxruntime-web module instead of the
 * export's vendored one; numThreads; store (default IndexedDB).
 */
export async function load(base = './', options = {}) {
  const url = baseUrl(base);
  const source = fetchSource(url);
  const manifest = JSON.parse(new TextDecoder().decode(await source.read('edgetrain-web.json')));
  const builds = (manifest && manifest.onnxruntime_web && manifest.onnxruntime_web.builds) || {};
  let backend = options.backend || 'auto';
  if (backend === 'auto') {
    backend = (builds.webgpu || options.ort) && await webgpuAvailable() ? 'webgpu' : 'wasm';
  }
  if (!['wasm', 'webgpu'].includes(backend)) throw new EdgetrainError(`unknown backend ${backend}`);
  let { ort } = options;
  if (!ort) {  // the vendored build, with its .wasm files next to it
    const build = builds[backend];
    if (typeof build !== 'string' || !/^ort\/[A-Za-z0-9_][A-Za-z0-9_.-]*\.mjs$/.test(build)) {
      throw new EdgetrainError(`this export has no ${backend} build of onnxruntime-web`);
    }
    ort = await import(new URL(build, url).href);
    ort.env.wasm.wasmPaths = new URL('ort/', url).href;
  }
  if (options.numThreads !== undefined) ort.env.wasm.numThreads = options.numThreads;
  const gpu = backend === 'webgpu';
  try {
    return await openExport({
      ort, source, store: options.store === undefined ? idbStore() : options.store,
      executionProviders: gpu ? ['webgpu', 'wasm'] : ['wasm'],
      fallbackProviders: gpu ? ['wasm'] : null, gpuState: gpu,
      sessionOptions: options.sessionOptions || {}, backend,
    });
  } catch (e) {
    if (!gpu || options.backend === 'webgpu' || options.ort || e.name !== 'EdgetrainError') throw e;
    // A graph the WebGPU build cannot take at all still runs on the wasm build.
    console.warn(`edgetrain: the WebGPU build cannot run this model (${e.message}); using wasm`);
    return load(base, { ...options, backend: 'wasm' });
  }
}

/** Offer the model's current state as a checkpoint file download. */
export async function download(model, filename = 'checkpoint.safetensors') {
  const blob = new Blob([await model.checkpoint()], { type: 'application/octet-stream' });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
