// edgetrain checkpoints: safetensors files with a checksum over canonical bytes, the model's
// architecture and, with a key, a MAC (docs/format.md). The same bytes as Python's
// edgetrain.format.save_checkpoint / load_checkpoint, so a checkpoint moves between them.

import { FORMAT_SCHEMA } from './schemas.js';

export const CHECKPOINT_KIND = 'edgetrain-checkpoint';
/** The checksum this driver writes; it reads this one and every older one. */
export const CHECKSUM_VERSION = 2;
export const MAC_SCHEME = 'hmac-sha256-v1';
export const MIN_KEY_BYTES = 16;
export const MAX_STEP = 2 ** 53;
/** A safetensors header nests three deep; anything far deeper is hostile. */
const MAX_HEADER_DEPTH = 16;
const MAX_HEADER_BYTES = 100_000_000;
const CHECKSUM_TAG = 'edgetrain-checkpoint-checksum-v2\u0000';
const MAC_TAG = 'edgetrain-checkpoint-mac-v1\u0000';
const UNCHECKED_KEYS = new Set(['checksum', 'mac']);  // the checksum itself, the MAC over it

export class EdgetrainError extends Error {
  constructor(message) { super(message); this.name = 'EdgetrainError'; }
}
export class CheckpointError extends EdgetrainError {
  constructor(message) { super(message); this.name = 'CheckpointError'; }
}

/**
 * The newest format version this driver reads (and writes into checkpoints): the schema's
 * bound on `format_version`, so the version is stated once, in the schema.
 */
export function formatVersion(schema = FORMAT_SCHEMA) {
  const spec = schema.properties.format_version;
  const v = spec.const ?? spec.maximum ?? (spec.enum ? Math.max(...spec.enum) : undefined);
  if (!Number.isInteger(v)) throw new EdgetrainError('the format schema bounds no format_version');
  return v;
}

// dtype name (numpy) -> typed array, onnxruntime type, safetensors code, bytes per element
export const DTYPES = {
  float32: { array: Float32Array, ort: 'float32', st: 'F32', size: 4 },
  float64: { array: Float64Array, ort: 'float64', st: 'F64', size: 8 },
  float16: { array: Uint16Array, ort: 'float16', st: 'F16', size: 2 },
  int64: { array: BigInt64Array, ort: 'int64', st: 'I64', size: 8 },
  int32: { array: Int32Array, ort: 'int32', st: 'I32', size: 4 },
  int8: { array: Int8Array, ort: 'int8', st: 'I8', size: 1 },
  uint8: { array: Uint8Array, ort: 'uint8', st: 'U8', size: 1 },
  bool: { array: Uint8Array, ort: 'bool', st: 'BOOL', size: 1 },
};
const FROM_ST = Object.fromEntries(Object.entries(DTYPES).map(([k, v]) => [v.st, k]));
export const FROM_ORT = Object.fromEntries(Object.entries(DTYPES).map(([k, v]) => [v.ort, k]));

// -- bytes ---------------------------------------------------------------------------------

export function product(dims) { return dims.reduce((a, b) => a * b, 1); }

export function bytesOf(typed) {
  return new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
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

/** UTF-8 bytes of a string (TextEncoder where the runtime has one). */
export function utf8Encode(s) {
  if (typeof TextEncoder !== 'undefined') return new TextEncoder().encode(s);
  const out = [];
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return Uint8Array.from(out);
}

/** Strict UTF-8 decoding (invalid bytes are an error), TextDecoder's where it exists. */
export function utf8Decode(bytes, what) {
  if (typeof TextDecoder !== 'undefined') {
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw new EdgetrainError(`${what} is not UTF-8 text`);
    }
  }
  let s = '';
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i];
    const n = b < 0x80 ? 0 : b >= 0xc2 && b < 0xe0 ? 1 : b >= 0xe0 && b < 0xf0 ? 2
      : b >= 0xf0 && b < 0xf5 ? 3 : -1;
    if (n < 0 || i + n >= bytes.length + (n ? 0 : 1)) throw new EdgetrainError(`${what} is not UTF-8 text`);
    let c = n ? b & (0x3f >> n) : b;
    for (let k = 1; k <= n; k++) {
      if ((bytes[i + k] & 0xc0) !== 0x80) throw new EdgetrainError(`${what} is not UTF-8 text`);
      c = (c << 6) | (bytes[i + k] & 63);
    }
    if ((n === 2 && (c < 0x800 || (c >= 0xd800 && c < 0xe000))) || (n === 3 && (c < 0x10000 || c > 0x10ffff))) {
      throw new EdgetrainError(`${what} is not UTF-8 text`);
    }
    s += String.fromCodePoint(c);
    i += n + 1;
  }
  return s;
}

const encoder = { encode: utf8Encode };

function text(s) {
  const b = encoder.encode(s);
  return concat([u64(b.length), b]);
}

function hex(bytes) { return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(''); }

/** Names in UTF-8 byte order (= code-point order), the order of every digest. */
export function utf8Order(names) {
  const keyed = names.map((n) => [encoder.encode(n), n]);
  keyed.sort(([a], [b]) => {
    for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
    return a.length - b.length;
  });
  return keyed.map(([, n]) => n);
}

function pyShape(dims) {  // Python's str(tuple): checksum version 1 hashes it
  if (dims.length === 1) return `(${dims[0]},)`;
  return `(${dims.join(', ')})`;
}

/** json.dumps(value, sort_keys=True), as Python writes the fingerprint. */
export function pyJson(value) {
  if (Array.isArray(value)) return `[${value.map(pyJson).join(', ')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${utf8Order(Object.keys(value)).map((k) => `${JSON.stringify(k)}: ${pyJson(value[k])}`)
      .join(', ')}}`;
  }
  return JSON.stringify(value);
}

// -- SHA-256 and HMAC ------------------------------------------------------------------------

function subtle() {  // WebCrypto: browsers (secure contexts), Node.js; not React Native
  return globalThis.crypto && globalThis.crypto.subtle ? globalThis.crypto.subtle : null;
}

export async function sha256(bytes) {
  const s = subtle();
  if (s) return new Uint8Array(await s.digest('SHA-256', bytes));
  return sha256Fallback(bytes);
}

const K256 = new Uint32Array([
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

/** SHA-256 in plain JavaScript, where WebCrypto is missing (React Native, http: pages). */
export function sha256Fallback(msg) {
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
      const t1 = (k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K256[i]
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

/** HMAC-SHA256 (RFC 2104), WebCrypto's where it exists. */
export async function hmacSha256(key, message) {
  const s = subtle();
  if (s) {
    const k = await s.importKey('raw', key, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    return new Uint8Array(await s.sign('HMAC', k, message));
  }
  const block = new Uint8Array(64);
  block.set(key.length > 64 ? sha256Fallback(key) : key);
  const pad = (x) => block.map((b) => b ^ x);
  return sha256Fallback(concat([pad(0x5c), sha256Fallback(concat([pad(0x36), message]))]));
}

function sameText(a, b) {  // constant-time for equal lengths, as hmac.compare_digest
  if (typeof a !== 'string' || typeof b !== 'string' || a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

// -- digests over canonical bytes ------------------------------------------------------------

function metadataBytes(metadata, skip) {
  const keys = utf8Order(Object.keys(metadata).filter((k) => !skip.has(k)));
  return concat([u64(keys.length), ...keys.flatMap((k) => [text(k), text(String(metadata[k]))])]);
}

/**
 * The checkpoint checksum (docs/format.md): version 2 is SHA-256 over the canonical bytes of
 * the metadata (but the checksum and the MAC) and of every tensor; version 1 is the digest of
 * older checkpoints (tensors only, Python's str(shape)).
 */
export async function checksum(tensors, metadata, version = CHECKSUM_VERSION) {
  const parts = [];
  if (version === 1) {
    for (const name of utf8Order(Object.keys(tensors))) {
      const t = tensors[name];
      parts.push(encoder.encode(name), encoder.encode(t.dtype), encoder.encode(pyShape(t.dims)),
        bytesOf(t.data));
    }
    return hex(await sha256(concat(parts)));
  }
  parts.push(encoder.encode(CHECKSUM_TAG), metadataBytes(metadata, UNCHECKED_KEYS));
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

/** The key as bytes (at least 16); a string is refused, it is rarely random enough. */
export function keyBytes(key) {
  let b = null;
  if (key instanceof Uint8Array) b = key;
  else if (key instanceof ArrayBuffer) b = new Uint8Array(key);
  else if (ArrayBuffer.isView(key)) b = bytesOf(key);
  if (!b) {
    throw new EdgetrainError('the checkpoint key must be bytes (a Uint8Array of random bytes, ' +
      `e.g. crypto.getRandomValues(new Uint8Array(32))), got ${typeof key}`);
  }
  if (b.length < MIN_KEY_BYTES) {
    throw new EdgetrainError(`the checkpoint key has ${b.length} bytes; use at least ` +
      `${MIN_KEY_BYTES} random bytes`);
  }
  return b;
}

/** The `mac` metadata value: HMAC-SHA256 over the canonical bytes of every other key. */
export async function mac(key, metadata) {
  const msg = concat([encoder.encode(MAC_TAG), metadataBytes(metadata, new Set(['mac']))]);
  return `${MAC_SCHEME}:${hex(await hmacSha256(keyBytes(key), msg))}`;
}

// -- safetensors -----------------------------------------------------------------------------

/** Names, dtypes and shapes: what a checkpoint must agree on with its model. */
export function fingerprint(tensors) {
  const fp = {};
  for (const name of utf8Order(Object.keys(tensors))) {
    fp[name] = [tensors[name].dtype, Array.from(tensors[name].dims, Number)];
  }
  return fp;
}

/**
 * Serialize {name: {dtype, dims, data}} as an edgetrain checkpoint (safetensors bytes).
 * `extra` metadata (the model's `architecture`) is recorded and covered by the checksum;
 * `key` adds the MAC.
 */
export async function encodeCheckpoint(tensors, { extra = {}, key, producer } = {}) {
  const header = {};
  let offset = 0;
  const names = utf8Order(Object.keys(tensors));
  for (const name of names) {
    const t = tensors[name];
    const n = t.data.byteLength;
    header[name] = { dtype: DTYPES[t.dtype].st, shape: Array.from(t.dims, Number),
      data_offsets: [offset, offset + n] };
    offset += n;
  }
  const meta = {
    kind: CHECKPOINT_KIND,
    format_version: String(formatVersion()),
    fingerprint: pyJson(fingerprint(tensors)),
    checksum_version: String(CHECKSUM_VERSION),
    producer: producer || 'edgetrain-js',
    ...extra,
  };
  meta.checksum = await checksum(tensors, meta);
  if (key !== undefined && key !== null) meta.mac = await mac(key, meta);
  header.__metadata__ = meta;
  let json = encoder.encode(JSON.stringify(header));
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
  for (const name of names) {
    out.set(bytesOf(tensors[name].data), o);
    o += tensors[name].data.byteLength;
  }
  return out;
}

/**
 * Check JSON text before parsing it: nesting at most `maxDepth` deep and no key twice in an
 * object (JSON.parse would keep the last, where another reader may keep the first).
 */
export function checkJsonText(raw, maxDepth, what) {
  const stack = [];  // per open bracket: a Set of keys (object) or null (array)
  let expectKey = false;
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i];
    if (c === '"') {
      let j = i + 1;
      while (j < raw.length && raw[j] !== '"') j += raw[j] === '\\' ? 2 : 1;
      const top = stack[stack.length - 1];
      if (top && expectKey) {
        let key;
        try {
          key = JSON.parse(raw.slice(i, j + 1));
        } catch {
          throw new EdgetrainError(`${what} is not valid JSON`);
        }
        if (top.has(key)) throw new EdgetrainError(`${what} has the key ${JSON.stringify(key).slice(0, 60)} twice`);
        top.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === '{' || c === '[') {
      if (stack.length >= maxDepth) {
        throw new EdgetrainError(`${what} nests deeper than ${maxDepth} levels`);
      }
      stack.push(c === '{' ? new Set() : null);
      expectKey = c === '{';
    } else if (c === '}' || c === ']') {
      stack.pop();
      expectKey = false;
    } else if (c === ',') {
      expectKey = Boolean(stack[stack.length - 1]);
    }
  }
}

/** Parse JSON text strictly (duplicate keys, nesting); `what` names it in messages. */
export function parseJson(raw, what, { maxDepth = 64, ErrorClass = EdgetrainError } = {}) {
  try {
    checkJsonText(raw, maxDepth, what);
    return JSON.parse(raw);
  } catch (e) {
    if (e instanceof EdgetrainError) throw new ErrorClass(e.message);
    throw new ErrorClass(`${what} is not valid JSON: ${e.message}`);
  }
}

function digitsVersion(meta, name, fallback, where) {
  const v = meta[name];
  if (v === undefined && fallback !== undefined) return fallback;
  if (typeof v !== 'string' || !/^[0-9]{1,6}$/.test(v)) {
    throw new CheckpointError(`${where} has an invalid ${name} (${JSON.stringify(v)?.slice(0, 40)})`);
  }
  return Number(v);
}

function headerOf(bytes, where) {
  if (bytes.length < 8) throw new CheckpointError(`${where} is truncated (${bytes.length} bytes)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  if (n <= 0 || n > bytes.length - 8 || n > MAX_HEADER_BYTES) {
    throw new CheckpointError(`${where} is corrupt or truncated (header length ${n})`);
  }
  let raw;
  try {
    raw = utf8Decode(bytes.subarray(8, 8 + n), `${where}'s header`);
  } catch (e) {
    throw new CheckpointError(`${where} has a corrupt header: ${e.message}`);
  }
  const header = parseJson(raw, `${where}'s header`,
    { maxDepth: MAX_HEADER_DEPTH, ErrorClass: CheckpointError });
  const meta = header && typeof header === 'object' && !Array.isArray(header)
    ? header.__metadata__ : undefined;
  if (!meta || typeof meta !== 'object' || Array.isArray(meta)) {
    throw new CheckpointError(`${where} is not an edgetrain checkpoint (no metadata)`);
  }
  if (!Object.values(meta).every((v) => typeof v === 'string')) {
    throw new CheckpointError(`${where} has a corrupt header: metadata values must be strings`);
  }
  return { header, meta, base: 8 + n };
}

function tensorsOf(header, bytes, base, where) {
  const entries = Object.entries(header).filter(([name]) => name !== '__metadata__');
  const spans = [];
  const tensors = {};
  for (const [name, info] of entries) {
    const dtype = info && FROM_ST[info.dtype];
    const shape = info && info.shape;
    const offsets = info && info.data_offsets;
    if (!dtype || !Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)
        || !Array.isArray(offsets) || offsets.length !== 2
        || !offsets.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new CheckpointError(`${where} is corrupt: tensor ${JSON.stringify(name).slice(0, 60)} ` +
        'has an invalid dtype, shape or offsets');
    }
    const [start, end] = offsets;
    if (end - start !== product(shape) * DTYPES[dtype].size || end > bytes.length - base) {
      throw new CheckpointError(`${where} is corrupt or truncated (tensor ${JSON.stringify(name).slice(0, 60)})`);
    }
    spans.push([start, end]);
    const copy = bytes.slice(base + start, base + end);  // aligned for the typed array
    tensors[name] = { dtype, dims: shape, data: new DTYPES[dtype].array(copy.buffer) };
  }
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);  // contiguous, no overlap, no gap
  let at = 0;
  for (const [start, end] of spans) {
    if (start !== at) throw new CheckpointError(`${where} is corrupt: tensor data overlap or leave gaps`);
    at = end;
  }
  if (at !== bytes.length - base) throw new CheckpointError(`${where} is corrupt: trailing bytes`);
  return tensors;
}

/**
 * Parse and verify an edgetrain checkpoint: {tensors, metadata}. Checked in the order of
 * docs/format.md: header, kind and versions, the MAC (when `key` is given), the tensors'
 * offsets and the checksum. The model-specific checks are `checkAgainst`'s.
 */
export async function decodeCheckpoint(input, { key, where = 'checkpoint' } = {}) {
  // A plain Uint8Array view (a Node.js Buffer's slice() would not copy).
  const bytes = ArrayBuffer.isView(input) ? bytesOf(input) : new Uint8Array(input);
  const { header, meta, base } = headerOf(bytes, where);
  if (meta.kind !== CHECKPOINT_KIND) {
    throw new CheckpointError(`${where} is a safetensors file but not an edgetrain checkpoint`);
  }
  const version = digitsVersion(meta, 'format_version', undefined, where);
  if (version > formatVersion()) {
    throw new CheckpointError(`${where} uses format version ${version}; this driver reads ` +
      `version ${formatVersion()} and older — upgrade edgetrain`);
  }
  const csVersion = digitsVersion(meta, 'checksum_version', 1, where);
  if (csVersion > CHECKSUM_VERSION) {
    throw new CheckpointError(`${where} uses checksum version ${csVersion}; this driver reads ` +
      `version ${CHECKSUM_VERSION} and older — upgrade edgetrain`);
  }
  if (key !== undefined && key !== null) {
    if (meta.mac === undefined) {
      throw new CheckpointError(`${where} carries no MAC, but a key was given: it was not ` +
        'saved with the key, or its MAC was removed');
    }
    if (!sameText(await mac(key, meta), meta.mac)) {
      throw new CheckpointError(`${where} fails its MAC check: it was not saved with this key, ` +
        'or it was modified');
    }
  }
  const tensors = tensorsOf(header, bytes, base, where);
  if (!sameText(await checksum(tensors, meta, csVersion), meta.checksum)) {
    throw new CheckpointError(`${where} fails its checksum: the file is corrupt or was modified`);
  }
  return { tensors, metadata: meta };
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

/**
 * The model-specific checks of a restore (docs/format.md steps 6-8): names, dtypes and shapes
 * equal `spec` ({name: {dtype, shape}}), the architecture (when both know it), and the values.
 */
export function checkAgainst(tensors, metadata, { spec, architecture, step, nonnegative = [],
  where = 'checkpoint' }) {
  const want = {};
  for (const k of utf8Order(Object.keys(spec))) want[k] = [spec[k].dtype, spec[k].shape];
  const got = fingerprint(tensors);
  if (pyJson(want) !== pyJson(got)) {
    throw new CheckpointError(`${where} belongs to another model: ${describeDiff(want, got)}`);
  }
  if (architecture && metadata.architecture !== undefined && metadata.architecture !== architecture) {
    throw new CheckpointError(`${where} belongs to another model: its tensors have the same ` +
      'names and shapes, but the network architecture or the optimizer configuration differs');
  }
  checkValues(tensors, step, nonnegative, where);
}

/** Refuse state no training run reaches: NaN/infinity, a step count out of range, negatives
 * where the optimizer or batch norm only make nonnegative values. */
export function checkValues(tensors, step, nonnegative, where) {
  for (const name of utf8Order(Object.keys(tensors))) {
    const t = tensors[name];
    const finite = t.dtype === 'float16' ? (v) => (v & 0x7c00) !== 0x7c00 : Number.isFinite;
    if (t.dtype.startsWith('float') && !t.data.every(finite)) {
      throw new CheckpointError(`${where}: tensor ${name} contains NaN or infinity; no training ` +
        'step commits such a value');
    }
  }
  const s = tensors[step];
  if (s) {
    if (!['int64', 'int32', 'int8', 'uint8'].includes(s.dtype) || s.data.length !== 1) {
      throw new CheckpointError(`${where}: the step count ${step} is ${s.dtype}[${s.dims}], ` +
        'not an integer scalar');
    }
    const v = BigInt(s.data[0]);
    if (v < 0n || v > BigInt(MAX_STEP)) {
      throw new CheckpointError(`${where}: the step count is ${v}; it must lie in [0, ${MAX_STEP}]`);
    }
  }
  for (const name of utf8Order(nonnegative.filter((n) => n in tensors))) {
    const t = tensors[name];
    const negative = t.dtype === 'float16' ? (v) => (v & 0x8000) && (v & 0x7fff) : (v) => v < 0;
    if (t.data.some(negative)) {
      throw new CheckpointError(`${where}: tensor ${name} holds negative values; it is ` +
        'nonnegative by construction');
    }
  }
}
