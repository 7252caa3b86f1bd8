// The core of edgetrain's JavaScript driver: the web export's format, the commit rule, and
// run / infer / save / restore on an injected onnxruntime (onnxruntime-node, onnxruntime-web or
// onnxruntime-react-native: they share one API). The entry points (node.js, web.js,
// react-native.js) pick the runtime, the execution providers and where files live; this module
// touches no file system, no network and no browser API of its own.
//
// A web export (`edgetrain export-web`) holds the standalone graphs the Python runtime runs
// (edgetrain.format.standalone): the variable state (weights, optimizer state, step counter) goes
// in as inputs and comes back as outputs. A training step's new state is kept only when the step
// counter advanced by exactly one; otherwise the step was not counted (a non-finite loss, rate or
// update) and every state value stays as it was.

import {
  CheckpointError, DTYPES, EdgetrainError, FROM_ORT, checkAgainst, decodeCheckpoint,
  encodeCheckpoint, formatVersion, parseJson, product, utf8Decode,
} from './checkpoint.js';
import { compileSchema } from './schema.js';
import { FORMAT_SCHEMA, MANIFEST_SCHEMA } from './schemas.js';

export {
  CHECKPOINT_KIND, CHECKSUM_VERSION, CheckpointError, EdgetrainError, checksum, decodeCheckpoint,
  encodeCheckpoint, fingerprint, formatVersion, hmacSha256, mac, sha256, sha256Fallback,
  utf8Decode, utf8Encode,
} from './checkpoint.js';
export { SchemaError, compileSchema, validate } from './schema.js';
export { FORMAT_SCHEMA, MANIFEST_SCHEMA } from './schemas.js';

export const VERSION = '0.1.0';
export const PRODUCER = `edgetrain-js ${VERSION}`;

/**
 * The commit rule (docs/format.md, Python's edgetrain.format.committed): keep a call's new
 * state only when the step counter advanced by exactly the number of steps the call ran (one
 * for train, K for train_steps). A step whose loss, rate or new state was not finite does not
 * count, so such a call advances less; a jump or a wrap-around is not a step either.
 */
export function committed(oldStep, newStep, steps = 1) {
  return BigInt(newStep) === BigInt(oldStep) + BigInt(steps);
}
/** The manifest `edgetrain export-web` writes into the folder. */
export const MANIFEST = 'edgetrain-web.json';
const MAX_MANIFEST_BYTES = 16 << 20;
export const MAX_FILE_BYTES = 2 ** 31;  // a graph, the state, frozen weights: protobuf's limit
const SCAN_UP_FRONT = 4096;  // float inputs of a training step up to this size are checked first

export class InputError extends EdgetrainError {
  constructor(message) { super(message); this.name = 'InputError'; }
}
export class FormatError extends EdgetrainError {
  constructor(message) { super(message); this.name = 'FormatError'; }
}
export class NonFiniteError extends EdgetrainError {
  constructor(message) { super(message); this.name = 'NonFiniteError'; }
}

// -- deterministic batches (the Python twins are in edgetrain.web._batches) -----------------

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

/**
 * A seeded split of `n` rows: {train, test} index arrays. The rows are shuffled (Fisher-Yates on
 * mulberry32) and the first round(n * testFraction) of them, at least one, are held out.
 */
export function splitIndices(seed, n, testFraction = 0.2) {
  const rand = mulberry32(seed);
  const perm = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  const nTest = n < 2 ? 0 : Math.min(n - 1, Math.max(1, Math.round(n * testFraction)));
  return { test: perm.slice(0, nTest), train: perm.slice(nTest) };
}

// -- the manifest --------------------------------------------------------------------------

let manifestCheck = null;
const metaChecks = new Map();  // by the name messages give the metadata

function sameSet(a, b) {
  const sa = new Set(a);
  return sa.size === new Set(b).size && [...new Set(b)].every((x) => sa.has(x));
}

/** The metadata of a trainable file against the format's schema, then its own consistency. */
export function validateMeta(meta, where = 'metadata') {
  const version = meta && typeof meta === 'object' ? meta.format_version : undefined;
  if (Number.isInteger(version) && version > formatVersion()) {
    throw new FormatError(`${where}: this file uses edgetrain format version ${version}; this ` +
      `driver reads version ${formatVersion()} and older — upgrade edgetrain`);
  }
  if (!metaChecks.has(where)) metaChecks.set(where, compileSchema(FORMAT_SCHEMA, { name: where }));
  const problem = metaChecks.get(where)(meta);
  if (problem) throw new FormatError(`invalid edgetrain metadata: ${problem}`);
  const { trainable, frozen, state, signatures } = meta;
  for (const [a, b, la, lb] of [[trainable, frozen, 'trainable', 'frozen'],
    [trainable, state, 'trainable', 'state'], [frozen, state, 'frozen', 'state']]) {
    const both = a.filter((x) => b.includes(x));
    if (both.length) throw new FormatError(`invalid ${where}: ${both[0]} is both ${la} and ${lb}`);
  }
  if (!state.includes(meta.step)) {
    throw new FormatError(`invalid ${where}: the step counter ${meta.step} is not state`);
  }
  const variables = [...trainable, ...state];
  for (const [name, sig] of Object.entries(signatures)) {
    const updates = Object.keys(sig.updates || {});
    if (updates.length && !sameSet(updates, variables)) {
      throw new FormatError(`invalid ${where}: signature ${name} does not update exactly the ` +
        'trainable and state tensors');
    }
  }
  if (!signatures.infer.outputs.some((o) => o.name === meta.output)) {
    throw new FormatError(`invalid ${where}: output ${meta.output} is not an output of infer`);
  }
  if (!signatures.train.inputs.some((i) => i.name === meta.label)) {
    throw new FormatError(`invalid ${where}: label ${meta.label} is not an input of train`);
  }
  return meta;
}

/** A web export's manifest against its schema (which includes the format's), then its files. */
export function validateManifest(manifest) {
  const wanted = MANIFEST_SCHEMA.properties.format_version.const;
  if (manifest && typeof manifest === 'object' && manifest.format === 'edgetrain-web'
      && manifest.format_version !== wanted) {
    throw new FormatError(`this web export is of version ${JSON.stringify(manifest.format_version)}; ` +
      `this driver reads version ${wanted}: export it again with this edgetrain`);
  }
  if (manifest && manifest.meta) validateMeta(manifest.meta, 'manifest.meta');
  manifestCheck ||= compileSchema(MANIFEST_SCHEMA,
    { registry: { 'format.schema.json': FORMAT_SCHEMA }, name: 'manifest' });
  const problem = manifestCheck(manifest);
  if (problem) throw new FormatError(`invalid web export manifest: ${problem}`);
  const { meta, graphs } = manifest;
  const tensors = Object.keys(manifest.state.tensors);
  const bad = (msg) => new FormatError(`invalid web export manifest: ${msg}`);
  if (!sameSet(tensors, [...meta.trainable, ...meta.state])) {
    throw bad('state.tensors are not the trainable and state tensors of meta');
  }
  const graphSigs = Object.keys(meta.signatures).filter((s) => meta.signatures[s].kind === 'graph');
  if (!sameSet(Object.keys(graphs), graphSigs)) throw bad('graphs are not the graph signatures');
  for (const [name, g] of Object.entries(graphs)) {
    const sig = meta.signatures[name];
    if (!g.state_inputs.every((k) => tensors.includes(k))) throw bad(`graphs.${name} reads unknown state`);
    if (!sameSet(Object.keys(g.updates), Object.keys(sig.updates || {}))) {
      throw bad(`graphs.${name}.updates differ from the signature's`);
    }
    for (const out of [...Object.values(g.updates), ...sig.outputs.map((o) => o.name)]) {
      if (!g.outputs.includes(out)) throw bad(`graphs.${name} lacks the output ${out}`);
    }
  }
  if (!manifest.nonnegative.every((k) => tensors.includes(k))) throw bad('nonnegative names unknown state');
  return manifest;
}

// -- sources: where an export's files come from ----------------------------------------------

/** Files of an export served over HTTP(S) (the browser, or Node.js with a URL). */
export function fetchSource(baseUrl) {
  const base = new URL(baseUrl);
  return {
    describe: (name) => new URL(name, base).href,
    async read(name, maxBytes = MAX_FILE_BYTES) {
      const url = new URL(name, base);
      let r;
      try {
        r = await fetch(url);
      } catch (e) {
        throw new EdgetrainError(`cannot fetch ${url.href}: ${e.message}`);
      }
      if (!r.ok) throw new EdgetrainError(`cannot fetch ${url.href}: HTTP ${r.status}`);
      const bytes = new Uint8Array(await r.arrayBuffer());
      if (bytes.length > maxBytes) {
        throw new EdgetrainError(`${url.href} is larger than ${maxBytes} bytes`);
      }
      return bytes;
    },
  };
}

// -- loading ---------------------------------------------------------------------------------

/**
 * Open an export from `source` with the injected `ort`. Options: executionProviders (list),
 * fallbackProviders (list tried if a session cannot be created), gpuState (keep the state in GPU
 * buffers between steps: WebGPU), store ({save(key, bytes), load(key)}: where save / restore
 * keep checkpoints), sessionOptions (merged into every session's options).
 */
export async function openExport({ ort, source, store = null, executionProviders,
  fallbackProviders = null, gpuState = false, sessionOptions = {}, backend = null }) {
  if (!ort || typeof ort.InferenceSession?.create !== 'function' || typeof ort.Tensor !== 'function') {
    throw new EdgetrainError('pass an onnxruntime module as { ort } (onnxruntime-node, ' +
      'onnxruntime-web or onnxruntime-react-native)');
  }
  const raw = await source.read(MANIFEST, MAX_MANIFEST_BYTES);
  let textValue;
  try {
    textValue = utf8Decode(raw, source.describe(MANIFEST));
  } catch (e) {
    throw new FormatError(e.message);
  }
  const manifest = validateManifest(parseJson(textValue, source.describe(MANIFEST),
    { ErrorClass: FormatError }));
  const model = new Model(ort, manifest, { source, store, executionProviders, fallbackProviders,
    gpuState, sessionOptions, backend });
  try {
    await model._init();
  } catch (e) {
    await model.release();
    throw e;
  }
  return model;
}

function isTensorLike(v) {
  return v !== null && typeof v === 'object' && typeof v.type === 'string' && v.dims !== undefined
    && (v.data !== undefined || typeof v.getData === 'function');
}

export class Model {
  constructor(ort, manifest, options) {
    this.ort = ort;
    this.manifest = manifest;
    this.meta = manifest.meta;
    this.signatures = manifest.meta.signatures;
    this.graphs = manifest.graphs;
    this.backend = options.backend;
    this._opts = options;
    this.store = options.store;
    this.sessions = {};
    this.providers = {};  // signature -> the execution providers its session got
    this.state = new Map();  // name -> ort.Tensor, swapped after each committed step
    this._initial = null;
    this.architecture = undefined;  // the exporter's record of the model (state file)
    this._queue = Promise.resolve();
  }

  async _init() {
    const m = this.manifest;
    const { source } = this._opts;
    const bytes = await source.read(m.state.file);
    const initial = await decodeCheckpoint(bytes, { where: source.describe(m.state.file) });
    this.architecture = initial.metadata.architecture;
    this._verify(initial, source.describe(m.state.file));
    this._initial = initial.tensors;
    this._setTensors(this._initial);
    let external = null;
    if (!source.modelPath) external = await source.read(m.external_data);
    for (const [name, g] of Object.entries(this.graphs)) {
      const model = source.modelPath ? source.modelPath(g.file) : await source.read(g.file);
      this.sessions[name] = await this._session(name, g, model, external);
    }
  }

  async _session(name, graph, model, external) {
    const { executionProviders, fallbackProviders, gpuState, sessionOptions } = this._opts;
    const opts = { graphOptimizationLevel: 'all', ...sessionOptions };
    if (external && external.byteLength) {
      opts.externalData = [{ path: this.manifest.external_data, data: external }];
    }
    const attempts = [[executionProviders, gpuState]];
    if (fallbackProviders) attempts.push([fallbackProviders, false]);
    let last = null;
    for (const [providers, gpu] of attempts) {
      const o = { ...opts };
      if (providers) o.executionProviders = providers;
      if (gpu) {  // keep the new state on the GPU between steps (the step count is read back)
        o.preferredOutputLocation = Object.fromEntries(Object.entries(graph.updates)
          .filter(([k]) => k !== this.meta.step).map(([, out]) => [out, 'gpu-buffer']));
      }
      try {
        const session = await this.ort.InferenceSession.create(model, o);
        this.providers[name] = providers || [];
        return session;
      } catch (e) {
        last = e;
        if (fallbackProviders) {
          console.warn(`edgetrain: ${name} cannot run on ${providers}: ${e.message}`);
        }
      }
    }
    throw new EdgetrainError(`cannot create the ${name} session: ${last && last.message}`);
  }

  /** Names, dtypes and shapes of the variable state (weights, optimizer state, step). */
  get stateSpec() { return this.manifest.state.tensors; }

  _verify({ tensors, metadata }, where) {
    checkAgainst(tensors, metadata, { spec: this.stateSpec, architecture: this.architecture,
      step: this.meta.step, nonnegative: this.manifest.nonnegative, where });
  }

  _setTensors(tensors) {
    for (const [name, t] of Object.entries(tensors)) {
      const old = this.state.get(name);
      this.state.set(name, new this.ort.Tensor(DTYPES[t.dtype].ort, t.data.slice(), t.dims));
      if (old) old.dispose?.();
    }
  }

  _serial(fn) {  // one call at a time: a step must see the state the previous one wrote
    const p = this._queue.then(fn, fn);
    this._queue = p.catch(() => {});
    return p;
  }

  /**
   * The name of `signature`'s input that plays `role` ('data', 'label', 'lr', 'features'):
   * found by role; files without roles (format version 1) use the label's name and 'lr'.
   */
  inputName(signature, role) {
    const sig = this.signatures[signature];
    if (!sig) throw new InputError(`unknown signature ${signature}`);
    const byRole = sig.inputs.find((s) => s.role === role);
    if (byRole) return byRole.name;
    const legacy = { label: this.meta.label || 'y', lr: 'lr', features: 'features' }[role];
    if (legacy && sig.inputs.some((s) => s.name === legacy)) return legacy;
    if (role === 'data') {
      const others = new Set([this.meta.label, 'lr']);
      const data = sig.inputs.filter((s) => !others.has(s.name) && !s.optional);
      if (data.length === 1) return data[0].name;
    }
    throw new InputError(`signature ${signature} has no ${role} input`);
  }

  _toTensor(sigName, spec, value) {
    const { Tensor } = this.ort;
    const dt = DTYPES[spec.dtype];
    if (!dt) throw new InputError(`${sigName}: unsupported input dtype ${spec.dtype}`);
    if (value === undefined || value === null) {
      if (!spec.optional) {
        throw new InputError(`${sigName}: missing input ${spec.name} (${spec.dtype}[${spec.shape}])`);
      }
      value = spec.default;
    }
    let data;
    let dims;
    if (isTensorLike(value)) {
      if (value.type !== dt.ort) {
        throw new InputError(`${sigName}: input ${spec.name} is ${value.type}, expected ${dt.ort}`);
      }
      data = value instanceof Tensor ? null : value.data;
      dims = value.dims;
    } else if (typeof value === 'number' || typeof value === 'bigint') {
      data = [value];
      dims = spec.shape.map(() => 1);
    } else if (value.data !== undefined && value.dims !== undefined) {
      ({ data, dims } = value);
    } else {
      data = value;
      if (typeof data.length !== 'number') {
        throw new InputError(`${sigName}: input ${spec.name} must be a tensor, an array or ` +
          '{data, dims}');
      }
      const known = spec.shape.filter((d) => typeof d === 'number' && d > 0);
      const free = spec.shape.length - known.length;
      if (free > 1) {
        throw new InputError(`${sigName}: pass ${spec.name} as {data, dims}: its shape ` +
          `[${spec.shape}] has ${free} free dimensions`);
      }
      const rest = product(known);
      if (data.length % rest) {
        throw new InputError(`${sigName}: input ${spec.name} has ${data.length} values, not a ` +
          `multiple of ${rest} (shape [${spec.shape}])`);
      }
      dims = spec.shape.map((d) => (typeof d === 'number' && d > 0 ? d : data.length / rest));
    }
    dims = Array.from(dims, Number);
    if (dims.length !== spec.shape.length) {
      throw new InputError(`${sigName}: input ${spec.name} has shape [${dims}] (rank ` +
        `${dims.length}), expected rank ${spec.shape.length}: [${spec.shape}]`);
    }
    spec.shape.forEach((d, i) => {
      if (typeof d === 'number' && d > 0 && dims[i] !== d) {
        throw new InputError(`${sigName}: input ${spec.name} has shape [${dims}], expected ` +
          `[${spec.shape}]`);
      }
    });
    if (data === null) return value;
    if (!(data instanceof dt.array)) {
      data = dt.array === BigInt64Array
        ? BigInt64Array.from(data, (v) => BigInt(v)) : dt.array.from(data, Number);
    }
    if (data.length !== product(dims)) {
      throw new InputError(`${sigName}: input ${spec.name} has ${data.length} values for ` +
        `shape [${dims}]`);
    }
    return new Tensor(dt.ort, data, dims);
  }

  /**
   * Call a signature by name, as Python's Model.run. Graph signatures return {output name:
   * value}: a number for a scalar output (the loss, a metric), an ort.Tensor otherwise.
   * 'save' / 'restore' take {checkpoint_path, key?} (a file path in Node.js, an IndexedDB key
   * in the browser).
   */
  run(name, inputs = {}) {
    const sig = Object.prototype.hasOwnProperty.call(this.signatures, name)
      ? this.signatures[name] : undefined;
    if (!sig) {
      return Promise.reject(new InputError(`unknown signature ${name}; this model has ` +
        `${Object.keys(this.signatures).sort().join(', ')}`));
    }
    if (sig.kind === 'builtin') {
      const unknown = Object.keys(inputs).filter((k) => k !== 'checkpoint_path' && k !== 'key');
      const path = inputs.checkpoint_path;
      if (path === undefined || unknown.length) {
        return Promise.reject(new InputError(`${name} takes checkpoint_path and optionally key`));
      }
      const call = name === 'save' ? this.save(path, { key: inputs.key })
        : this.restore(path, { key: inputs.key });
      return call.then(() => ({ checkpoint_path: path }));
    }
    return this._serial(() => this._run(name, sig, inputs));
  }

  _feeds(name, sig, inputs) {
    const known = new Set(sig.inputs.map((s) => s.name));
    const unknown = Object.keys(inputs).filter((k) => !known.has(k));
    if (unknown.length) {
      throw new InputError(`${name}: unknown input(s) ${unknown.join(', ')}; expected ` +
        `${[...known].join(', ')}`);
    }
    const feeds = {};
    const named = {};  // symbolic dim -> [size, input]: 'N' must agree between x and y
    for (const spec of sig.inputs) {
      const t = this._toTensor(name, spec, inputs[spec.name]);
      spec.shape.forEach((d, i) => {
        if (typeof d !== 'string') return;
        if (named[d] && named[d][0] !== t.dims[i]) {
          throw new InputError(`${name}: input ${spec.name} dim ${i} is ${t.dims[i]} but ` +
            `${named[d][1]} has ${named[d][0]} for ${d}`);
        }
        named[d] = [t.dims[i], spec.name];
      });
      if (t.dims.length && t.dims[0] === 0) {
        throw new InputError(`${name}: input ${spec.name} is an empty batch`);
      }
      feeds[spec.name] = t;
    }
    this._checkValues(name, sig, feeds, inputs);
    return feeds;
  }

  /**
   * As Python's runtime checks them: a learning rate finite and >= 0 (the file's default too: a
   * file may be hostile), small float inputs finite, class indices in range. A training step's
   * large inputs are not scanned up front: non-finite data makes the step not count.
   */
  _checkValues(name, sig, feeds, given) {
    const updating = Object.keys(sig.updates || {}).length > 0;
    let lr = null;
    try {
      lr = this.inputName(name, 'lr');
    } catch { /* no rate input */ }
    if (updating && lr && feeds[lr]) {
      const t = feeds[lr];  // a scalar, or one rate per step (train_steps)
      const values = t.data.length ? Array.from(t.data, Number) : [NaN];
      const v = values.find((x) => !(Number.isFinite(x) && x >= 0));
      if (v !== undefined) {
        const source = lr in given ? '' : " (the model file's default)";
        throw new InputError(`${name}: the learning rate '${lr}'${source} must be finite and ≥ 0, got ${v}`);
      }
    }
    if (!updating && name !== 'eval') return;
    for (const [k, t] of Object.entries(feeds)) {
      if (!(k in given) || !t.type.startsWith('float') || t.type === 'float16') continue;
      if ((!updating || t.data.length <= SCAN_UP_FRONT) && !t.data.every(Number.isFinite)) {
        throw new InputError(`${name}: input ${k} contains NaN or infinity`);
      }
    }
    const label = feeds[this.meta.label];
    if (label && this.meta.labels === 'index' && /int/.test(label.type) && label.data.length) {
      const out = this.signatures.infer.outputs.find((o) => o.name === this.meta.output);
      const n = out && out.shape.length > 1 && Number.isInteger(out.shape[1]) && out.shape[1] > 0
        ? out.shape[1] : null;
      let lo = Infinity;
      let hi = -Infinity;
      for (const v of label.data) { const x = Number(v); if (x < lo) lo = x; if (x > hi) hi = x; }
      if (lo < 0 || (n !== null && hi >= n)) {
        throw new InputError(`${name}: labels in '${this.meta.label}' must lie in [0, ${n}); got ` +
          `min ${lo}, max ${hi}`);
      }
    }
  }

  async _run(name, sig, inputs) {
    const graph = Object.prototype.hasOwnProperty.call(this.graphs, name) ? this.graphs[name]
      : undefined;
    if (!graph) {
      throw new InputError(`${name} is not in this export (its graph was not exported; ` +
        `this export runs ${Object.keys(this.graphs).sort().join(', ')})`);
    }
    const feeds = this._feeds(name, sig, inputs);
    const own = new Set(Object.values(feeds));
    for (const k of graph.state_inputs) feeds[k] = this.state.get(k);
    let results;
    try {
      results = await this.sessions[name].run(feeds);
    } catch (e) {  // onnxruntime refused the data (or ran out of memory): nothing changed
      throw new EdgetrainError(`${name}: onnxruntime failed: ${String(e && e.message).split('\n')[0]}`);
    }
    // The commit rule: the graph counts a step only when its loss, rate and every new state
    // value are finite; the new state is kept only when the counter went up by exactly the
    // number of steps the call ran (one; K for train_steps).
    const stepOut = graph.updates[this.meta.step];
    let commit = true;
    if (stepOut !== undefined) {
      commit = committed(this.state.get(this.meta.step).data[0], results[stepOut].data[0],
        this._steps(name, feeds));
    }
    for (const [k, out] of Object.entries(graph.updates)) {
      if (!commit) {
        results[out].dispose?.();
        continue;
      }
      const old = this.state.get(k);
      this.state.set(k, results[out]);
      if (old && old !== results[out]) old.dispose?.();
    }
    const outputs = {};
    for (const o of sig.outputs) {
      const t = results[o.name];
      if (o.shape.length === 0) {
        outputs[o.name] = Number(t.data[0]);
        t.dispose?.();
      } else {
        outputs[o.name] = t;
      }
    }
    if (!commit) throw this._refusal(name, feeds, own, outputs);
    return outputs;
  }

  /**
   * How many training steps one call runs: the length of its rate input when that is a vector
   * (train_steps: one rate per step), else one (as Python's runtime counts them).
   */
  _steps(name, feeds) {
    let lr = null;
    try {
      lr = this.inputName(name, 'lr');
    } catch { /* no rate input */ }
    const t = lr ? feeds[lr] : undefined;
    return t && t.dims.length === 1 ? Number(t.dims[0]) : 1;
  }

  _refusal(name, feeds, own, outputs) {
    for (const [k, t] of Object.entries(feeds)) {  // name the culprit when it was the data
      if (!own.has(t) || !t.type.startsWith('float') || t.type === 'float16') continue;
      if (!t.data.every(Number.isFinite)) {
        return new InputError(`${name}: input ${k} contains NaN or infinity; the step was ` +
          'skipped and the weights are unchanged');
      }
    }
    const loss = outputs.loss;
    if (typeof loss === 'number' && !Number.isFinite(loss)) {
      return new NonFiniteError(`${name}: the loss is ${loss}; the step was skipped and the ` +
        'weights are unchanged');
    }
    return new NonFiniteError(`${name}: the gradients or the updated weights or optimizer ` +
      `state are not finite (loss ${loss ?? 'n/a'}); the step was skipped and the weights are ` +
      'unchanged');
  }

  /** One training step on (data, label): the loss, a number. `lr` overrides the rate. */
  async train(x, y, { lr } = {}) {
    const inputs = { [this.inputName('train', 'data')]: x, [this.inputName('train', 'label')]: y };
    if (lr !== undefined) inputs[this.inputName('train', 'lr')] = lr;
    const out = await this.run('train', inputs);
    return out[this.signatures.train.outputs.find((o) => o.role === 'loss')?.name || 'loss'];
  }

  /** The model's prediction (the `output` of infer) for `x`, or for {input: value, ...}. */
  async infer(x) {
    const one = this.signatures.infer.inputs.length === 1 && (isTensorLike(x) || ArrayBuffer.isView(x)
      || Array.isArray(x) || (x && x.data !== undefined && x.dims !== undefined));
    const inputs = one ? { [this.signatures.infer.inputs[0].name]: x } : x;
    const out = await this.run('infer', inputs);
    return out[this.meta.output];
  }

  /** The current state as {name: {dtype, dims, data}} copies (downloaded from the GPU). */
  getState() {
    return this._serial(async () => {
      const out = {};
      for (const [name, t] of this.state) {
        const data = t.location && t.location !== 'cpu' ? await t.getData() : t.data;
        out[name] = { dtype: FROM_ORT[t.type], dims: Array.from(t.dims, Number), data: data.slice() };
      }
      return out;
    });
  }

  /** Replace the state ({name: {dtype, dims, data}}): all of it, checked as a checkpoint is. */
  setState(tensors, where = 'state') {
    return this._serial(async () => {
      this._verify({ tensors, metadata: {} }, where);
      this._setTensors(tensors);
    });
  }

  /** Current trainable parameters (copies). */
  async parameters() {
    const state = await this.getState();
    return Object.fromEntries(this.meta.trainable.map((k) => [k, state[k]]));
  }

  /** Training steps taken so far (the step counter in the state). */
  async step() {
    return this._serial(async () => Number(this.state.get(this.meta.step).data[0]));
  }

  /** Back to the exported initial state. */
  reset() { return this.setState(this._initial); }

  /** The current state as an edgetrain checkpoint (safetensors bytes; Python restores it). */
  async checkpoint({ key } = {}) {
    const extra = this.architecture ? { architecture: this.architecture } : {};
    return encodeCheckpoint(await this.getState(), { extra, key, producer: PRODUCER });
  }

  /** Restore from checkpoint bytes (Python's, a download, a file); verified in full first. */
  async loadCheckpoint(bytes, { key, where = 'checkpoint' } = {}) {
    const ck = await decodeCheckpoint(bytes, { key, where });
    await this._serial(async () => {
      this._verify(ck, where);
      this._setTensors(ck.tensors);
    });
  }

  _needStore() {
    if (!this.store) {
      throw new EdgetrainError('this model has no checkpoint store; pass { store } to load, or ' +
        'use checkpoint() / loadCheckpoint(bytes)');
    }
    return this.store;
  }

  /** Save the state as a checkpoint at `path` (Node.js: a file; browser: an IndexedDB key). */
  async save(path, { key } = {}) {
    const store = this._needStore();
    await store.save(path, await this.checkpoint({ key }));
    return path;
  }

  /** Restore the checkpoint at `path`; verified first, the state unchanged on any failure. */
  async restore(path, { key } = {}) {
    const store = this._needStore();
    const bytes = await store.load(path);
    if (!bytes) throw new CheckpointError(`no checkpoint ${JSON.stringify(path)} in ${store.describe?.() || 'the store'}`);
    await this.loadCheckpoint(bytes, { key, where: `checkpoint ${JSON.stringify(path)}` });
    return path;
  }

  async release() {
    for (const s of Object.values(this.sessions)) await s.release?.();
    for (const t of this.state.values()) t.dispose?.();
    this.sessions = {};
    this.state.clear();
  }
}
