// edgetrain for browsers (onnxruntime-web: wasm, WebGPU).
import type { Model, OrtModule, Store } from './core.js';

export * from './core.js';

export interface LoadOptions {
  /** 'auto' (WebGPU where available, else wasm), 'wasm' or 'webgpu'. */
  backend?: 'auto' | 'wasm' | 'webgpu';
  /** onnxruntime-web; default: the build the export vendors in ort/. */
  ort?: OrtModule;
  numThreads?: number;
  /** Where save / restore keep checkpoints (default: IndexedDB). */
  store?: Store | null;
  sessionOptions?: Record<string, unknown>;
}

/** Load an export folder by URL, relative to the page. */
export function load(base?: string | URL, options?: LoadOptions): Promise<Model>;
/** Offer the model's state as a checkpoint download. */
export function download(model: Model, filename?: string): Promise<void>;
/** Checkpoints in IndexedDB. */
export function idbStore(dbName?: string, storeName?: string): Store;
