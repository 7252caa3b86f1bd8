// Node.js storage: an export folder on the file system, and checkpoints as files.
//
// Reads open the file without blocking (a FIFO or a device named like a checkpoint cannot hang
// the process), refuse anything but a regular file and bound its size before reading. Writes are
// atomic: a temporary file in the same folder, flushed to disk, then renamed over the target, so
// a crash leaves the old checkpoint or the new one, never half of one.

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { CheckpointError, EdgetrainError, MAX_FILE_BYTES } from './core.js';

/** A path, a file: URL (string or URL object) -> an absolute path. */
export function toPath(where) {
  if (where instanceof URL) {
    if (where.protocol !== 'file:') throw new EdgetrainError(`not a file URL: ${where.href}`);
    return fileURLToPath(where);
  }
  if (typeof where !== 'string' || !where) {
    throw new EdgetrainError(`expected a path or a file: URL, got ${typeof where}`);
  }
  if (/^file:/i.test(where)) return fileURLToPath(where);
  return path.resolve(where);
}

/** The bytes of the regular file at `file`, at most `maxBytes`; ErrorClass names the thing. */
export async function readRegularFile(file, what, maxBytes = MAX_FILE_BYTES,
  ErrorClass = EdgetrainError) {
  let fh;
  try {
    fh = await fs.promises.open(file, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK || 0));
  } catch (e) {
    if (e.code === 'ENOENT') return null;
    throw new ErrorClass(`cannot open ${what} ${file}: ${e.code || e.message}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new ErrorClass(`${what} ${file} is not a regular file`);
    if (st.size > maxBytes) {
      throw new ErrorClass(`${what} ${file} is ${st.size} bytes, more than the ${maxBytes} read`);
    }
    const out = new Uint8Array(st.size);
    let at = 0;
    while (at < st.size) {
      const { bytesRead } = await fh.read(out, at, st.size - at, at);
      if (bytesRead === 0) break;
      at += bytesRead;
    }
    if (at !== st.size) throw new ErrorClass(`${what} ${file} shrank while it was read`);
    return out;
  } finally {
    await fh.close();
  }
}

/** Write `bytes` to `file` atomically (temporary file, fsync, rename, fsync of the folder). */
export async function atomicWrite(file, bytes, ErrorClass = EdgetrainError) {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const fh = await fs.promises.open(tmp, 'wx', 0o644);
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.promises.rename(tmp, file);
    const d = await fs.promises.open(dir, 'r');
    try { await d.sync(); } catch { /* some file systems cannot sync a folder */ } finally { await d.close(); }
  } catch (e) {
    await fs.promises.rm(tmp, { force: true }).catch(() => {});
    if (e instanceof EdgetrainError) throw e;
    throw new ErrorClass(`cannot write ${file}: ${e.code || e.message}`);
  }
}

/** An export's name (`train.onnx`, `ort/x.mjs`): plain, inside the folder, never `..`. */
function inside(root, name) {
  const parts = String(name).split('/');
  if (!parts.every((p) => /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(p)) || parts.length > 2) {
    throw new EdgetrainError(`refusing to read ${JSON.stringify(name)} from the export: not a ` +
      'plain file name');
  }
  return path.join(root, ...parts);
}

/** The files of an export folder (path, relative path or file: URL). */
export function folderSource(where) {
  const root = toPath(where);
  return {
    root,
    describe: (name) => path.join(root, name),
    async read(name, maxBytes = MAX_FILE_BYTES) {
      const file = inside(root, name);
      const bytes = await readRegularFile(file, 'export file', maxBytes);
      if (!bytes) {
        throw new EdgetrainError(`no ${name} in ${root}: is it a folder written by ` +
          '`edgetrain export-web`?');
      }
      return bytes;
    },
  };
}

/** Checkpoints as files: paths (relative to the working directory) or file: URLs. */
export function fileStore() {
  return {
    describe: () => 'the file system',
    async save(where, bytes) {
      await atomicWrite(toPath(where), bytes, CheckpointError);
    },
    async load(where) {
      return readRegularFile(toPath(where), 'checkpoint', MAX_FILE_BYTES, CheckpointError);
    },
  };
}
