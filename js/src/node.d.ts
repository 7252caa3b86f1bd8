// edgetrain for Node.js (onnxruntime-node).
import type { Model, OrtModule, Source, Store } from './core.js';

export * from './core.js';

export const DEFAULT_PROVIDERS: string[];

export interface LoadOptions {
  /** onnxruntime-node (default: import('onnxruntime-node')). */
  ort?: OrtModule;
  /** Default ['cpu']. */
  executionProviders?: any[];
  /** Where save / restore keep checkpoints (default: files; paths relative to the working directory). */
  store?: Store | null;
  sessionOptions?: Record<string, unknown>;
}

/** Load an export: a folder (path or file: URL) or an http(s): URL. */
export function load(where?: string | URL, options?: LoadOptions): Promise<Model>;

export function folderSource(where: string | URL): Source & { root: string };
export function fileStore(): Store;
export function toPath(where: string | URL): string;
export function readRegularFile(file: string, what: string, maxBytes?: number,
  ErrorClass?: new (message: string) => Error): Promise<Uint8Array | null>;
export function atomicWrite(file: string, bytes: Uint8Array, ErrorClass?: new (message: string) => Error): Promise<void>;
