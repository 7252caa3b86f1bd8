// edgetrain for React Native, with onnxruntime-react-native (iOS, Android).
//
//   import * as ort from 'onnxruntime-react-native';
//   import RNFS from 'react-native-fs';
//   import { load, rnfsFiles } from 'edgetrain/react-native';
//   const m = await load(`${RNFS.DocumentDirectoryPath}/site`, { ort, files: rnfsFiles(RNFS) });
//
// The same core as in Node.js and the browser. React Native has no file API of its own, so the app
// hands one in (`files`: readFile, writeFile, moveFile, unlink as plain functions over
// Uint8Array; rnfsFiles adapts react-native-fs). Sessions are created from the graph files' paths,
// so the native onnxruntime reads them and the shared frozen weights (frozen.bin) itself.

import { CheckpointError, EdgetrainError, openExport } from './core.js';

export * from './core.js';

export const DEFAULT_PROVIDERS = ['cpu'];
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/** Base64 of bytes (react-native-fs moves binary data as base64 strings). */
export function toBase64(bytes) {
  let out = '';
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    out += B64[(n >> 18) & 63] + B64[(n >> 12) & 63]
      + (i + 1 < bytes.length ? B64[(n >> 6) & 63] : '=') + (i + 2 < bytes.length ? B64[n & 63] : '=');
  }
  return out;
}

/** Bytes of base64 text; anything but the base64 alphabet is an error. */
export function fromBase64(text) {
  const s = text.replace(/[\r\n]/g, '');
  if (s.length % 4 || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) throw new EdgetrainError('invalid base64 data');
  const pad = s.endsWith('==') ? 2 : s.endsWith('=') ? 1 : 0;
  const out = new Uint8Array((s.length / 4) * 3 - pad);
  let o = 0;
  for (let i = 0; i < s.length; i += 4) {
    const n = (B64.indexOf(s[i]) << 18) | (B64.indexOf(s[i + 1]) << 12)
      | ((B64.indexOf(s[i + 2]) & 63) << 6) | (B64.indexOf(s[i + 3]) & 63);
    for (const shift of [16, 8, 0]) if (o < out.length) out[o++] = (n >> shift) & 255;
  }
  return out;
}

/** The `files` adapter for react-native-fs (RNFS). */
export function rnfsFiles(RNFS) {
  return {
    async readFile(path) {
      if (!await RNFS.exists(path)) return null;
      const st = await RNFS.stat(path);
      if (!st.isFile()) throw new EdgetrainError(`${path} is not a regular file`);
      return fromBase64(await RNFS.readFile(path, 'base64'));
    },
    writeFile: (path, bytes) => RNFS.writeFile(path, toBase64(bytes), 'base64'),
    moveFile: async (from, to) => {
      if (await RNFS.exists(to)) await RNFS.unlink(to);
      await RNFS.moveFile(from, to);
    },
    unlink: (path) => RNFS.unlink(path),
  };
}

function join(dir, name) { return `${dir.replace(/\/+$/, '')}/${name}`; }

function plain(name) {
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(name)) {
    throw new EdgetrainError(`refusing to read ${JSON.stringify(name)}: not a plain file name`);
  }
  return name;
}

/** An export folder read through `files`; graphs are handed to onnxruntime by path. */
export function filesSource(dir, files) {
  return {
    describe: (name) => join(dir, name),
    modelPath: (name) => join(dir, plain(name)),
    async read(name) {
      const bytes = await files.readFile(join(dir, plain(name)));
      if (!bytes) throw new EdgetrainError(`no ${name} in ${dir}: is it an edgetrain web export?`);
      return bytes;
    },
  };
}

/** Checkpoints as files through `files`; a relative path is taken inside `dir`. */
export function filesStore(dir, files) {
  const where = (p) => (String(p).startsWith('/') || /^file:/.test(p) ? String(p) : join(dir, p));
  return {
    describe: () => dir,
    async save(path, bytes) {
      const target = where(path);
      const tmp = `${target}.${Date.now()}.tmp`;
      try {
        await files.writeFile(tmp, bytes);
        await files.moveFile(tmp, target);  // the old checkpoint or the new one, never half
      } catch (e) {
        await Promise.resolve(files.unlink?.(tmp)).catch(() => {});
        throw new CheckpointError(`cannot write checkpoint ${target}: ${e.message}`);
      }
    },
    load: (path) => files.readFile(where(path)),
  };
}

/**
 * Load an export folder on the device. Options: ort (onnxruntime-react-native, required),
 * files (required: see rnfsFiles), executionProviders (default ['cpu']; e.g. ['xnnpack',
 * 'cpu'], ['coreml', 'cpu'] or ['nnapi', 'cpu']), checkpointDir (default: the export folder).
 */
export async function load(dir, options = {}) {
  if (!options.files) {
    throw new EdgetrainError('pass { files } to load (rnfsFiles(RNFS) for react-native-fs): ' +
      'React Native has no file API of its own');
  }
  return openExport({
    ort: options.ort,
    source: filesSource(dir, options.files),
    store: filesStore(options.checkpointDir || dir, options.files),
    executionProviders: options.executionProviders || DEFAULT_PROVIDERS,
    sessionOptions: options.sessionOptions || {},
    backend: 'react-native',
  });
}
