// Types of the edgetrain core (core.js), shared by every entry point.

/** A value of a signature's input: an onnxruntime Tensor, a typed array, an array, {data, dims}, or a scalar. */
export type TensorLike = {
  readonly type: string;
  readonly dims: readonly number[];
  readonly data?: unknown;
  dispose?(): void;
  getData?(): Promise<unknown>;
};
export type InputValue =
  | TensorLike
  | ArrayLike<number | bigint>
  | { data: ArrayLike<number | bigint>; dims: readonly number[] }
  | number
  | bigint;

/** What a signature returns: numbers for scalar outputs (the loss, a metric), tensors otherwise. */
export type Outputs = Record<string, number | TensorLike>;

export interface TensorSpec {
  name: string;
  dtype: string;
  shape: (number | string | null)[];
  optional?: boolean;
  default?: number;
  role?: 'data' | 'label' | 'lr' | 'features' | 'prediction' | 'output' | 'loss' | 'metric';
}
export interface SignatureSpec {
  kind: 'graph' | 'builtin';
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  graph?: string;
  updates?: Record<string, string>;
}
/** The trainable file's edgetrain metadata (src/edgetrain/format/schema.json). */
export interface Meta {
  format_version: number;
  signatures: Record<string, SignatureSpec>;
  trainable: string[];
  frozen: string[];
  state: string[];
  step: string;
  output: string;
  label: string;
  labels: 'index' | 'onehot';
  classification: boolean;
  loss: { name: string; [key: string]: unknown };
  optimizer: { name: string; lr: number; [key: string]: unknown };
  task?: 'multiclass' | 'binary' | 'regression';
  [key: string]: unknown;
}
export interface GraphFile {
  file: string;
  state_inputs: string[];
  updates: Record<string, string>;
  outputs: string[];
}
export interface ImageGeometry {
  layout: 'NCHW' | 'NHWC' | 'NHW' | 'flat';
  channels: 1 | 3;
  height: number;
  width: number;
}
/** edgetrain-web.json (js/schema/web-manifest.schema.json). */
export interface Manifest {
  format: 'edgetrain-web';
  format_version: number;
  producer: string;
  meta: Meta;
  graphs: Record<string, GraphFile>;
  state: { file: string; tensors: Record<string, { dtype: string; shape: number[] }> };
  nonnegative: string[];
  external_data: string;
  onnxruntime_web: { version: string; builds: { wasm?: string; webgpu?: string } };
  batch_size: number;
  dataset: Record<string, unknown> | null;
  input: {
    name: string;
    dtype: string;
    sample_shape: (number | string | null)[];
    image: ImageGeometry | null;
    scale: number;
    mean: number[] | null;
    std: number[] | null;
  };
}

/** A state tensor outside onnxruntime: numpy's dtype name, dims, a typed array. */
export interface HostTensor {
  dtype: string;
  dims: number[];
  data: Float32Array | Float64Array | Uint16Array | BigInt64Array | Int32Array | Int8Array | Uint8Array;
}
export type Key = Uint8Array | ArrayBuffer | ArrayBufferView;

/** Where an export's files come from. `modelPath` makes sessions load graphs by path. */
export interface Source {
  describe(name: string): string;
  read(name: string, maxBytes?: number): Promise<Uint8Array>;
  modelPath?(name: string): string;
}
/** Where save / restore keep checkpoints (files, IndexedDB, ...). */
export interface Store {
  describe?(): string;
  save(path: any, bytes: Uint8Array): Promise<void>;
  load(path: any): Promise<Uint8Array | null>;
}

/** The onnxruntime module: onnxruntime-node, onnxruntime-web or onnxruntime-react-native. */
export interface OrtModule {
  InferenceSession: { create(model: any, options?: any): Promise<any> };
  Tensor: new (type: any, data: any, dims?: readonly number[]) => any;
  env?: any;
}

export interface OpenOptions {
  ort: OrtModule;
  source: Source;
  store?: Store | null;
  executionProviders?: any[];
  fallbackProviders?: any[] | null;
  gpuState?: boolean;
  sessionOptions?: Record<string, unknown>;
  backend?: string | null;
}

export class Model {
  readonly ort: OrtModule;
  readonly manifest: Manifest;
  readonly meta: Meta;
  readonly signatures: Record<string, SignatureSpec>;
  readonly graphs: Record<string, GraphFile>;
  readonly backend: string | null;
  readonly providers: Record<string, any[]>;
  readonly architecture: string | undefined;
  readonly stateSpec: Manifest['state']['tensors'];
  store: Store | null;
  /** The name of a signature's input that plays `role` (version-1 files: y / lr by name). */
  inputName(signature: string, role: 'data' | 'label' | 'lr' | 'features'): string;
  /** Call a signature by name, as Python's Model.run. */
  run(name: string, inputs?: Record<string, InputValue | undefined>): Promise<Outputs>;
  run(name: 'save' | 'restore', inputs: { checkpoint_path: any; key?: Key }): Promise<{ checkpoint_path: any }>;
  /** One training step; the loss. */
  train(x: InputValue, y: InputValue, options?: { lr?: number }): Promise<number>;
  /** The model's prediction (infer's `output`). */
  infer(x: InputValue | Record<string, InputValue>): Promise<TensorLike>;
  getState(): Promise<Record<string, HostTensor>>;
  setState(tensors: Record<string, HostTensor>, where?: string): Promise<void>;
  parameters(): Promise<Record<string, HostTensor>>;
  step(): Promise<number>;
  reset(): Promise<void>;
  checkpoint(options?: { key?: Key }): Promise<Uint8Array>;
  loadCheckpoint(bytes: Uint8Array | ArrayBuffer, options?: { key?: Key; where?: string }): Promise<void>;
  save(path: any, options?: { key?: Key }): Promise<any>;
  restore(path: any, options?: { key?: Key }): Promise<any>;
  release(): Promise<void>;
}

export class EdgetrainError extends Error {}
export class InputError extends EdgetrainError {}
export class FormatError extends EdgetrainError {}
export class CheckpointError extends EdgetrainError {}
export class NonFiniteError extends EdgetrainError {}
export class SchemaError extends Error {}

export const VERSION: string;
export const PRODUCER: string;
export const MANIFEST: string;
export const MAX_FILE_BYTES: number;
export const CHECKPOINT_KIND: string;
export const CHECKSUM_VERSION: number;
export const FORMAT_SCHEMA: Record<string, unknown>;
export const MANIFEST_SCHEMA: Record<string, unknown>;
/** The commit rule: the counter advanced by exactly `steps` (1 for train, K for train_steps). */
export function committed(oldStep: number | bigint, newStep: number | bigint,
  steps?: number): boolean;

export function openExport(options: OpenOptions): Promise<Model>;
export function fetchSource(baseUrl: string | URL): Source;
export function validateManifest(manifest: unknown): Manifest;
export function validateMeta(meta: unknown, where?: string): Meta;
export function formatVersion(schema?: Record<string, unknown>): number;

export function mulberry32(seed: number): () => number;
export function batchIndices(seed: number, steps: number, batchSize: number, n: number): Int32Array[];
export function splitIndices(seed: number, n: number, testFraction?: number): { train: number[]; test: number[] };

export function encodeCheckpoint(tensors: Record<string, HostTensor>,
  options?: { extra?: Record<string, string>; key?: Key; producer?: string }): Promise<Uint8Array>;
export function decodeCheckpoint(bytes: Uint8Array | ArrayBuffer | ArrayBufferView,
  options?: { key?: Key; where?: string }): Promise<{ tensors: Record<string, HostTensor>; metadata: Record<string, string> }>;
export function checksum(tensors: Record<string, HostTensor>, metadata: Record<string, string>, version?: number): Promise<string>;
export function mac(key: Key, metadata: Record<string, string>): Promise<string>;
export function fingerprint(tensors: Record<string, HostTensor>): Record<string, [string, number[]]>;
export function sha256(bytes: Uint8Array): Promise<Uint8Array>;
export function sha256Fallback(bytes: Uint8Array): Uint8Array;
export function hmacSha256(key: Uint8Array, message: Uint8Array): Promise<Uint8Array>;
export function utf8Encode(text: string): Uint8Array;
export function utf8Decode(bytes: Uint8Array, what: string): string;

export function compileSchema(schema: unknown, options?: { registry?: Record<string, unknown>; name?: string }): (value: unknown) => string | null;
export function validate<T>(schema: unknown, value: T, options?: { registry?: Record<string, unknown>; name?: string; prefix?: string; ErrorClass?: new (message: string) => Error }): T;
