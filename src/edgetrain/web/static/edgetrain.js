// edgetrain.js: train an edgetrain export in the browser with stock onnxruntime-web.
//
//   import { load } from './edgetrain.js';
//   const model = await load('./');                       // wasm, or WebGPU where available
//   const { loss } = await model.run('train', { x, y });  // x: Float32Array, y: labels
//   const { logits } = await model.run('infer', { x });
//   await model.save('mine');    await model.restore('mine');   // IndexedDB
//   model.download('mine.safetensors');                          // an edgetrain checkpoint
//
// The graphs are the ones the Python runtime runs (edgetrain.format.standalone): the variable
// state (weights, optimizer state, step) goes in as inputs and comes back as outputs. The state
// stays onnxruntime-web tensors between steps (GPU buffers on WebGPU); checkpoints are the same
// safetensors files Python writes and reads, checksum and fingerprint included.

export const VERSION = '0.1.0';
const MANIFEST = 'edgetrain-web.json';
const CHECKPOINT_KIND = 'edgetrain-checkpoint';
const FORMAT_VERSION = 2;
const IDB_NAME = 'edgetrain';
const IDB_STORE = 'checkpoints';

export class EdgetrainError extends Error {
  constructor(message) { super(message); this.name = 'EdgetrainError'; }
}
export class NonFiniteError extends EdgetrainError {
  constructor(message) { super(message); this.name = 'NonFiniteError'; }
}

// dtype name (numpy) -> typed array, onnxruntime-web type, safetensors code
const DTYPES = {
  float32: { array: Float32Array, ort: 'float32', st: 'F32' },
  float64: { array: Float64Array, ort: 'float64', st: 'F64' },
  float16: { array: Uint16Array, ort: 'float16', st: 'F16' },
  int64: { array: BigInt64Array, ort: 'int64', st: 'I64' },
  int32: { array: Int32Array, ort: 'int32', st: 'I32' },
  int8: { array: Int8Array, ort: 'int8', st: 'I8' },
  uint8: { array: Uint8Array, ort: 'uint8', st: 'U8' },
  bool: { array: Uint8Array, ort: 'bool', st: 'BOOL' },
};
const FROM_ST = Object.fromEntries(Object.entries(DTYPES).map(([k, v]) => [v.st, k]));
const FROM_ORT = Object.fromEntries(Object.entries(DTYPES).map(([k, v]) => [v.ort, k]));

// -- deterministic batches (the Python twin is edgetrain.web.Mulberry32) -----------------------

/** mulberry32: returns a function giving floats in [0, 1), identical to Python's Mulberry32. */
export function mulberry32(seed) {
  let a = seed >>> 0;
  return function next() {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `steps` batches of `batchSize` indices in [0, n), drawn with replacement. */
export function batchIndices(seed, steps, batchSize, n) {
  const rand = mulberry32(seed);
  const out = [];
  for (let s = 0; s < steps; s++) {
    const b = new Int32Array(batchSize);
    for (let i = 0; i < batchSize; i++) b[i] = Math.floor(rand() * n);
    out.push(b);
  }
  return out;
}

// -- small helpers -------------------------------------------------------------------------

function product(dims) { return dims.reduce((a, b) => a * b, 1); }

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new EdgetrainError(`cannot fetch ${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

function bytesOf(typed) {
  return new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
}

function pyShape(dims) {  // Python's str(tuple): the checksum hashes it
  if (dims.length === 1) return `(${dims[0]},)`;
  return `(${dims.join(', ')})`;
}

function pyJson(value) {  // json.dumps(..., sort_keys=True) for the fingerprint
  if (Array.isArray(value)) return `[${value.map(pyJson).join(', ')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}: ${pyJson(value[k])}`)
      .join(', ')}}`;
  }
  return JSON.stringify(value);
}

function sortedNames(obj) {  // code-point order, as Python's sorted()
  return Object.keys(obj).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

async function sha256(bytes) {
  if (globalThis.crypto && crypto.subtle) {
    return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  }
  return sha256Fallback(bytes);  // crypto.subtle exists only in secure contexts
}

function sha256Fallback(msg) {
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2]);
  const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f,
    0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const len = msg.length;
  const padded = new Uint8Array(Math.ceil((len + 9) / 64) * 64);
  padded.set(msg);
  padded[len] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(len / 0x20000000));
  view.setUint32(padded.length - 4, (len * 8) >>> 0);
  const w = new Uint32Array(64);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(off + 4 * i);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, k] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = (k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i]
        + w[i]) >>> 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      k = g; g = f; f = e; e = (d + t1) >>> 0; d = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    [a, b, c, d, e, f, g, k].forEach((v, i) => { h[i] = (h[i] + v) >>> 0; });
  }
  const out = new Uint8Array(32);
  const ov = new DataView(out.buffer);
  h.forEach((v, i) => ov.setUint32(4 * i, v));
  return out;
}

function hex(bytes) { return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(''); }

const CHECKSUM_VERSION = 2;
const CHECKSUM_TAG = 'edgetrain-checkpoint-checksum-v2\u0000';
const UNCHECKED_KEYS = new Set(['checksum', 'mac']);  // the checksum itself, the MAC over it

function utf8Order(names) {  // sorted by UTF-8 bytes, the order of every digest (docs/format.md)
  const enc = new TextEncoder();
  const keyed = names.map((n) => [enc.encode(n), n]);
  keyed.sort(([a], [b]) => {
    for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
    return a.length - b.length;
  });
  return keyed.map(([, n]) => n);
}

function concat(parts) {
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { all.set(p, o); o += p.length; }
  return all;
}

function u64(n) {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return b;
}

function i64s(values) {
  const b = new Uint8Array(8 * values.length);
  const v = new DataView(b.buffer);
  values.forEach((d, i) => v.setBigInt64(8 * i, BigInt(d), true));
  return b;
}

function text(s) {
  const b = new TextEncoder().encode(s);
  return concat([u64(b.length), b]);
}

/**
 * The checkpoint checksum of edgetrain (docs/format.md): version 2 is SHA-256 over the
 * canonical bytes of the metadata (but the checksum and the MAC) and of every tensor; version 1
 * is the legacy digest of older checkpoints (tensors only, Python's str(shape)).
 */
async function checksum(tensors, metadata, version = CHECKSUM_VERSION) {
  const enc = new TextEncoder();
  const parts = [];
  if (version === 1) {
    for (const name of sortedNames(tensors)) {
      const t = tensors[name];
      parts.push(enc.encode(name), enc.encode(t.dtype), enc.encode(pyShape(t.dims)),
        bytesOf(t.data));
    }
    return hex(await sha256(concat(parts)));
  }
  const keys = utf8Order(Object.keys(metadata).filter((k) => !UNCHECKED_KEYS.has(k)));
  parts.push(enc.encode(CHECKSUM_TAG), u64(keys.length));
  for (const k of keys) parts.push(text(k), text(String(metadata[k])));
  const names = utf8Order(Object.keys(tensors));
  parts.push(u64(names.length));
  for (const name of names) {
    const t = tensors[name];
    const data = bytesOf(t.data);
    parts.push(text(name), text(DTYPES[t.dtype].st), u64(t.dims.length), i64s(t.dims),
      u64(data.length), data);
  }
  return hex(await sha256(concat(parts)));
}

function checksumVersion(meta) {  // absent: a checkpoint older than checksum versions
  const v = meta.checksum_version;
  if (v === undefined) return 1;
  if (typeof v !== 'string' || !/^[0-9]{1,6}$/.test(v)) {
    throw new EdgetrainError('checkpoint has an invalid checksum_version');
  }
  if (Number(v) > CHECKSUM_VERSION) {
    throw new EdgetrainError(`checkpoint checksum version ${v} is newer than this driver ` +
      `reads (${CHECKSUM_VERSION})`);
  }
  return Number(v);
}

function fingerprint(tensors) {
  const fp = {};
  for (const name of sortedNames(tensors)) fp[name] = [tensors[name].dtype, tensors[name].dims];
  return fp;
}

function describeDiff(want, got) {
  const parts = [];
  const missing = Object.keys(want).filter((k) => !(k in got));
  const extra = Object.keys(got).filter((k) => !(k in want));
  if (missing.length) parts.push(`missing tensors ${missing.slice(0, 5).join(', ')}`);
  if (extra.length) parts.push(`unexpected tensors ${extra.slice(0, 5).join(', ')}`);
  for (const k of Object.keys(want)) {
    if (k in got && pyJson(want[k]) !== pyJson(got[k])) {
      parts.push(`${k} is ${got[k][0]}[${got[k][1]}] in the checkpoint but ` +
        `${want[k][0]}[${want[k][1]}] in the model`);
    }
  }
  return parts.join('; ');
}

// -- safetensors (the checkpoint format of edgetrain.format) -------------------------------

/**
 * Serialize {name: {dtype, dims, data}} as an edgetrain checkpoint (safetensors bytes).
 * `extra` metadata (e.g. the model's `architecture`) is recorded and covered by the checksum.
 */
export async function encodeCheckpoint(tensors, extra = {}) {
  const header = {};
  let offset = 0;
  for (const name of sortedNames(tensors)) {
    const t = tensors[name];
    const n = t.data.byteLength;
    header[name] = { dtype: DTYPES[t.dtype].st, shape: t.dims, data_offsets: [offset, offset + n] };
    offset += n;
  }
  const meta = {
    kind: CHECKPOINT_KIND,
    format_version: String(FORMAT_VERSION),
    fingerprint: pyJson(fingerprint(tensors)),
    checksum_version: String(CHECKSUM_VERSION),
    producer: `edgetrain-web ${VERSION}`,
    ...extra,
  };
  meta.checksum = await checksum(tensors, meta);
  header.__metadata__ = meta;
  let json = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) {
    const p = new Uint8Array(json.length + pad).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let o = 8 + json.length;
  for (const name of sortedNames(tensors)) {
    out.set(bytesOf(tensors[name].data), o);
    o += tensors[name].data.byteLength;
  }
  return out;
}

/** Parse and verify an edgetrain checkpoint: {tensors, metadata}. */
export async function decodeCheckpoint(bytes) {
  bytes = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  if (bytes.length < 8) throw new EdgetrainError(`checkpoint is truncated (${bytes.length} bytes)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  if (n <= 0 || n > bytes.length - 8) throw new EdgetrainError('checkpoint is corrupt or truncated');
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  } catch (e) {
    throw new EdgetrainError(`checkpoint has a corrupt header: ${e.message}`);
  }
  const meta = header.__metadata__ || {};
  if (meta.kind !== CHECKPOINT_KIND) {
    throw new EdgetrainError('this file is not an edgetrain checkpoint');
  }
  if (Number(meta.format_version) > FORMAT_VERSION) {
    throw new EdgetrainError(`checkpoint format version ${meta.format_version} is newer than ` +
      `this driver reads (${FORMAT_VERSION})`);
  }
  const base = 8 + n;
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const dtype = FROM_ST[info.dtype];
    if (!dtype) throw new EdgetrainError(`checkpoint tensor ${name} has unsupported dtype ${info.dtype}`);
    const [start, end] = info.data_offsets;
    if (end > bytes.length - base || start > end) {
      throw new EdgetrainError(`checkpoint is truncated (tensor ${name})`);
    }
    const Arr = DTYPES[dtype].array;
    const copy = bytes.slice(base + start, base + end);  // aligned copy
    tensors[name] = { dtype, dims: info.shape, data: new Arr(copy.buffer) };
  }
  if (await checksum(tensors, meta, checksumVersion(meta)) !== meta.checksum) {
    throw new EdgetrainError('checkpoint fails its checksum: the file is corrupt or was modified');
  }
  return { tensors, metadata: meta };
}

// -- IndexedDB -----------------------------------------------------------------------------

function idb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(IDB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(IDB_STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(new EdgetrainError(`IndexedDB: ${req.error}`));
  });
}

async function idbDo(mode, fn) {
  const db = await idb();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(IDB_STORE, mode);
      const req = fn(tx.objectStore(IDB_STORE));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(new EdgetrainError(`IndexedDB: ${tx.error}`));
      tx.onabort = () => reject(new EdgetrainError(`IndexedDB: ${tx.error}`));
    });
  } finally {
    db.close();
  }
}

// -- the model ----------------------------------------------------------------------------

async function webgpuAvailable() {
  try {
    return Boolean(globalThis.navigator?.gpu && await navigator.gpu.requestAdapter());
  } catch {
    return false;
  }
}

/**
 * Load an export folder. Options: backend 'auto' (WebGPU where available, else wasm) | 'wasm' |
 * 'webgpu'; ort: an onnxruntime-web module to use instead of the vendored one; numThreads.
 */
export async function load(base = './', options = {}) {
  const baseUrl = new URL(base.endsWith('/') ? base : `${base}/`, globalThis.location?.href);
  const r = await fetch(new URL(MANIFEST, baseUrl));
  if (!r.ok) throw new EdgetrainError(`no ${MANIFEST} at ${baseUrl} (HTTP ${r.status})`);
  const manifest = await r.json();
  let backend = options.backend || 'auto';
  const builds = manifest.onnxruntime_web.builds;
  if (backend === 'auto') backend = builds.webgpu && await webgpuAvailable() ? 'webgpu' : 'wasm';
  if (!builds[backend]) throw new EdgetrainError(`this export has no ${backend} build`);
  let ort = options.ort;
  if (!ort) {  // the vendored build, with its .wasm files next to it
    ort = await import(new URL(builds[backend], baseUrl).href);
    ort.env.wasm.wasmPaths = new URL(builds[backend].replace(/[^/]*$/, ''), baseUrl).href;
  }
  if (options.numThreads !== undefined) ort.env.wasm.numThreads = options.numThreads;
  const model = new Model(ort, manifest, baseUrl, backend);
  try {
    await model._init();
  } catch (e) {
    if (backend !== 'webgpu' || options.backend === 'webgpu' || options.ort) throw e;
    // A graph the WebGPU build cannot take (an op or type neither its WebGPU nor its CPU
    // kernels cover) still runs on the wasm build.
    console.warn(`edgetrain: WebGPU build cannot run this model (${e.message}); using wasm`);
    await model.release();
    return load(base, { ...options, backend: 'wasm' });
  }
  return model;
}

export class Model {
  constructor(ort, manifest, baseUrl, backend) {
    this.ort = ort;
    this.manifest = manifest;
    this.baseUrl = baseUrl;
    this.backend = backend;
    this.signatures = manifest.signatures;
    this.sessions = {};
    this.providers = {};  // signature -> 'webgpu' | 'wasm', where its session runs
    this.state = new Map();  // name -> ort.Tensor, swapped after each updating step
    this._initial = null;
    this._architecture = undefined;  // from the exported state's metadata, when recorded
    this._queue = Promise.resolve();
  }

  async _init() {
    const m = this.manifest;
    const [frozen, stateBytes] = await Promise.all([
      fetchBytes(new URL(m.external_data, this.baseUrl)),
      fetchBytes(new URL(m.state.file, this.baseUrl))]);
    const initial = await decodeCheckpoint(stateBytes);
    this._initial = initial.tensors;
    this._architecture = initial.metadata.architecture;  // the exporter's record of the model
    this._checkFingerprint(this._initial);
    this._setTensors(this._initial);
    for (const [name, sig] of Object.entries(this.signatures)) {
      if (sig.kind !== 'graph') continue;
      const graph = await fetchBytes(new URL(sig.graph, this.baseUrl));
      const opts = { graphOptimizationLevel: 'all' };
      if (frozen.byteLength) opts.externalData = [{ path: m.external_data, data: frozen }];
      if (this.backend === 'webgpu') {
        try {  // keep the new state on the GPU between steps
          this.sessions[name] = await this.ort.InferenceSession.create(graph, {
            ...opts, executionProviders: ['webgpu', 'wasm'],
            preferredOutputLocation: Object.fromEntries(Object.entries(sig.updates)
              .filter(([k]) => k !== m.step)  // the step count is read after every step
              .map(([, out]) => [out, 'gpu-buffer'])),
          });
          this.providers[name] = 'webgpu';
          continue;
        } catch (e) {  // e.g. ops or types the WebGPU provider cannot place: run on the CPU
          console.warn(`edgetrain: ${name} runs on wasm, WebGPU could not take it: ${e.message}`);
        }
      }
      this.sessions[name] = await this.ort.InferenceSession.create(graph, {
        ...opts, executionProviders: ['wasm'] });
      this.providers[name] = 'wasm';
    }
  }

  /** Names and dtypes of the variable state (weights, optimizer state, step). */
  get stateSpec() { return this.manifest.state.tensors; }

  _checkFingerprint(tensors) {
    const want = {};
    for (const [k, v] of Object.entries(this.stateSpec)) want[k] = [v.dtype, v.shape];
    const got = fingerprint(tensors);
    if (pyJson(want) !== pyJson(got)) {
      throw new EdgetrainError(`checkpoint belongs to another model: ${describeDiff(want, got)}`);
    }
  }

  _setTensors(tensors) {
    for (const [name, t] of Object.entries(tensors)) {
      const old = this.state.get(name);
      this.state.set(name, new this.ort.Tensor(DTYPES[t.dtype].ort, t.data.slice(), t.dims));
      if (old) old.dispose();
    }
  }

  _serial(fn) {  // one call at a time: a step must see the state the previous one wrote
    const p = this._queue.then(fn, fn);
    this._queue = p.catch(() => {});
    return p;
  }

  _toTensor(sigName, spec, value) {
    const { Tensor } = this.ort;
    const dt = DTYPES[spec.dtype];
    if (!dt) throw new EdgetrainError(`${sigName}: unsupported input dtype ${spec.dtype}`);
    if (value === undefined || value === null) {
      if (!spec.optional) {
        throw new EdgetrainError(`${sigName}: missing input ${spec.name} ` +
          `(${spec.dtype}[${spec.shape}])`);
      }
      value = spec.default;
    }
    let data;
    let dims;
    if (value instanceof Tensor) {
      if (value.type !== dt.ort) {
        throw new EdgetrainError(`${sigName}: input ${spec.name} is ${value.type}, expected ` +
          `${dt.ort}`);
      }
      data = null;
      dims = value.dims;
    } else if (typeof value === 'number' || typeof value === 'bigint') {
      data = [value];
      dims = spec.shape.map(() => 1);
    } else if (value.data !== undefined && value.dims !== undefined) {
      ({ data, dims } = value);
    } else {
      data = value;
      const known = spec.shape.filter((d) => typeof d === 'number' && d > 0);
      const free = spec.shape.length - known.length;
      if (free > 1) {
        throw new EdgetrainError(`${sigName}: pass ${spec.name} as {data, dims}: its shape ` +
          `[${spec.shape}] has ${free} free dimensions`);
      }
      const rest = product(known);
      if (data.length % rest) {
        throw new EdgetrainError(`${sigName}: input ${spec.name} has ${data.length} values, ` +
          `not a multiple of ${rest} (shape [${spec.shape}])`);
      }
      dims = spec.shape.map((d) => (typeof d === 'number' && d > 0 ? d : data.length / rest));
    }
    dims = Array.from(dims, Number);
    if (dims.length !== spec.shape.length) {
      throw new EdgetrainError(`${sigName}: input ${spec.name} has shape [${dims}] (rank ` +
        `${dims.length}), expected rank ${spec.shape.length}: [${spec.shape}]`);
    }
    spec.shape.forEach((d, i) => {
      if (typeof d === 'number' && d > 0 && dims[i] !== d) {
        throw new EdgetrainError(`${sigName}: input ${spec.name} has shape [${dims}], ` +
          `expected [${spec.shape}]`);
      }
    });
    if (data === null) return value;
    if (!(data instanceof dt.array)) {
      data = dt.array === BigInt64Array
        ? BigInt64Array.from(data, (v) => BigInt(v)) : dt.array.from(data, Number);
    }
    if (data.length !== product(dims)) {
      throw new EdgetrainError(`${sigName}: input ${spec.name} has ${data.length} values for ` +
        `shape [${dims}]`);
    }
    return new Tensor(dt.ort, data, dims);
  }

  /**
   * Call a signature by name, as Python's Model.run. Graph signatures return
   * {output name: ort.Tensor}; 'save' / 'restore' take {checkpoint_path} (an IndexedDB key).
   */
  run(name, inputs = {}) {
    const sig = this.signatures[name];
    if (!sig) {
      return Promise.reject(new EdgetrainError(`unknown signature ${name}; this model has ` +
        `${Object.keys(this.signatures).sort().join(', ')}`));
    }
    if (sig.kind === 'builtin') {
      const key = inputs.checkpoint_path;
      if (key === undefined) {
        return Promise.reject(new EdgetrainError(`${name} takes one input, checkpoint_path`));
      }
      const call = name === 'save' ? this.save(key) : this.restore(key);
      return call.then(() => ({ checkpoint_path: key }));
    }
    return this._serial(() => this._run(name, sig, inputs));
  }

  async _run(name, sig, inputs) {
    const known = new Set(sig.inputs.map((s) => s.name));
    const unknown = Object.keys(inputs).filter((k) => !known.has(k));
    if (unknown.length) {
      throw new EdgetrainError(`${name}: unknown input(s) ${unknown.join(', ')}; expected ` +
        `${[...known].join(', ')}`);
    }
    const feeds = {};
    const named = {};  // symbolic dim -> [size, input]: 'N' must agree between x and y
    for (const spec of sig.inputs) {
      const t = this._toTensor(name, spec, inputs[spec.name]);
      spec.shape.forEach((d, i) => {
        if (typeof d !== 'string') return;
        if (named[d] && named[d][0] !== t.dims[i]) {
          throw new EdgetrainError(`${name}: input ${spec.name} dim ${i} is ${t.dims[i]} but ` +
            `${named[d][1]} has ${named[d][0]} for ${d}`);
        }
        named[d] = [t.dims[i], spec.name];
      });
      if (t.dims.length && t.dims[0] === 0) {
        throw new EdgetrainError(`${name}: input ${spec.name} is an empty batch`);
      }
      feeds[spec.name] = t;
    }
    for (const k of sig.state_inputs) feeds[k] = this.state.get(k);
    const results = await this.sessions[name].run(feeds);
    // The graph counts a step only when its loss, rate and gradients are finite; the new state
    // is committed only then, so a skipped step leaves every weight as it was.
    const stepOut = sig.updates[this.manifest.step];
    // The commit rule: the counter advanced by exactly one (this driver runs one step a call).
    const commit = stepOut === undefined || Number(results[stepOut].data[0]) ===
      Number(this.state.get(this.manifest.step).data[0]) + 1;
    for (const [k, out] of Object.entries(sig.updates)) {
      if (!commit) {
        results[out].dispose();
        continue;
      }
      const old = this.state.get(k);
      this.state.set(k, results[out]);
      if (old && old !== results[out]) old.dispose();
    }
    const outputs = {};
    for (const o of sig.outputs) outputs[o.name] = results[o.name];
    if (!commit) {
      const loss = outputs.loss ? Number(outputs.loss.data[0]) : NaN;
      throw new NonFiniteError(Number.isFinite(loss)
        ? `${name}: the gradient is not finite (loss ${loss}); the step was skipped and the ` +
          'weights are unchanged'
        : `${name}: the loss is ${loss}; the step was skipped and the weights are unchanged`);
    }
    return outputs;
  }

  /** The current state as {name: {dtype, dims, data}} copies (downloaded from the GPU). */
  getState() {
    return this._serial(async () => {
      const out = {};
      for (const [name, t] of this.state) {
        const data = t.location === 'cpu' ? t.data : await t.getData();
        out[name] = { dtype: FROM_ORT[t.type], dims: Array.from(t.dims), data: data.slice() };
      }
      return out;
    });
  }

  /** Replace state tensors ({name: {dtype, dims, data}}); the full set must match the model. */
  setState(tensors) {
    return this._serial(async () => {
      this._checkFingerprint(tensors);
      this._setTensors(tensors);
    });
  }

  /** Current trainable parameters (copies). */
  async parameters() {
    const state = await this.getState();
    return Object.fromEntries(this.manifest.trainable.map((k) => [k, state[k]]));
  }

  /** Training steps taken so far (the step counter in the state). */
  async step() {
    const s = await this.getState();
    return Number(s[this.manifest.step].data[0]);
  }

  /** Back to the exported initial state. */
  reset() { return this.setState(this._initial); }

  /** The current state as an edgetrain checkpoint (safetensors bytes; Python restores it). */
  async checkpoint() {
    const extra = this._architecture ? { architecture: this._architecture } : {};
    return encodeCheckpoint(await this.getState(), extra);
  }

  /** Restore from checkpoint bytes (from Python, a download, or IndexedDB); verified first. */
  async loadCheckpoint(bytes) {
    const { tensors, metadata } = await decodeCheckpoint(bytes);
    if (this._architecture && metadata.architecture
        && metadata.architecture !== this._architecture) {
      throw new EdgetrainError('checkpoint belongs to another model: the network architecture ' +
        'or the optimizer configuration differs');
    }
    await this.setState(tensors);
  }

  /** Save the state to IndexedDB under `key`. */
  async save(key = 'default') {
    const bytes = await this.checkpoint();
    await idbDo('readwrite', (store) => store.put(bytes, key));
    return key;
  }

  /** Restore the state saved under `key` in IndexedDB. */
  async restore(key = 'default') {
    const bytes = await idbDo('readonly', (store) => store.get(key));
    if (!bytes) throw new EdgetrainError(`no checkpoint ${JSON.stringify(key)} in IndexedDB`);
    await this.loadCheckpoint(bytes);
    return key;
  }

  /** Offer the current state as a checkpoint file download. */
  async download(filename = 'checkpoint.safetensors') {
    const blob = new Blob([await this.checkpoint()], { type: 'application/octet-stream' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = filename;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  async release() {
    for (const s of Object.values(this.sessions)) await s.release();
    for (const t of this.state.values()) t.dispose();
    this.sessions = {};
    this.state.clear();
  }
}
