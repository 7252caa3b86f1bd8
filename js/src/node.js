// edgetrain for Node.js, with onnxruntime-node (CPU).
//
//   import * as ort from 'onnxruntime-node';
//   import { load } from 'edgetrain';              // or 'edgetrain/node'
//   const m = await load('site/', { ort });        // a folder written by `edgetrain export-web`
//   const { loss } = await m.run('train', { x, y });
//   await m.save('ck.safetensors'); await m.restore('ck.safetensors');

import { EdgetrainError, fetchSource, openExport } from './core.js';
import { fileStore, folderSource } from './storage-node.js';

export * from './core.js';
export { atomicWrite, fileStore, folderSource, readRegularFile, toPath } from './storage-node.js';

/** The execution providers used unless `executionProviders` says otherwise. */
export const DEFAULT_PROVIDERS = ['cpu'];

async function defaultOrt() {
  try {
    const mod = await import('onnxruntime-node');
    return mod.InferenceSession ? mod : mod.default;
  } catch (e) {
    throw new EdgetrainError('edgetrain needs onnxruntime-node: npm install onnxruntime-node ' +
      `(or pass { ort }): ${e.message}`);
  }
}

/**
 * Load an export: `where` is a folder (a path, relative to the working directory, or a file:
 * URL) or an http(s): URL. Options: ort (default: import('onnxruntime-node')),
 * executionProviders (default ['cpu']), store (default: checkpoints are files), sessionOptions.
 */
export async function load(where = '.', options = {}) {
  const ort = options.ort || await defaultOrt();
  const isHttp = (typeof where === 'string' && /^https?:/i.test(where))
    || (where instanceof URL && /^https?:$/.test(where.protocol));
  const base = isHttp ? String(where).replace(/\/?$/, '/') : where;
  const source = isHttp ? fetchSource(base) : folderSource(where);
  return openExport({
    ort,
    source,
    store: options.store === undefined ? fileStore() : options.store,
    executionProviders: options.executionProviders || DEFAULT_PROVIDERS,
    sessionOptions: options.sessionOptions || {},
    backend: 'node',
  });
}
