// edgetrain for React Native (onnxruntime-react-native).
import type { Model, OrtModule, Source, Store } from './core.js';

export * from './core.js';

export const DEFAULT_PROVIDERS: string[];

/** The file access an app hands in (rnfsFiles adapts react-native-fs). */
export interface Files {
  /** The file's bytes, or null if there is none. */
  readFile(path: string): Promise<Uint8Array | null>;
  writeFile(path: string, bytes: Uint8Array): Promise<void>;
  /** Replace `to` with `from`. */
  moveFile(from: string, to: string): Promise<void>;
  unlink?(path: string): Promise<void>;
}

export interface LoadOptions {
  /** onnxruntime-react-native. */
  ort: OrtModule;
  files: Files;
  /** Default ['cpu']; e.g. ['xnnpack', 'cpu'], ['coreml', 'cpu'], ['nnapi', 'cpu']. */
  executionProviders?: any[];
  /** Where relative checkpoint paths go (default: the export folder). */
  checkpointDir?: string;
  sessionOptions?: Record<string, unknown>;
}

/** Load an export folder on the device (an absolute path). */
export function load(dir: string, options: LoadOptions): Promise<Model>;
export function rnfsFiles(RNFS: unknown): Files;
export function filesSource(dir: string, files: Files): Source;
export function filesStore(dir: string, files: Files): Store;
export function toBase64(bytes: Uint8Array): string;
export function fromBase64(text: string): Uint8Array;
