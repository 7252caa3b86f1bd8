// Where the Node tests find their fixtures (see tests/js_fixtures.py): $EDGETRAIN_JS_FIXTURES,
// written by the Python test suite, or made here by running that script once per process.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const JS_ROOT = fileURLToPath(new URL('..', import.meta.url));
export const REPO = path.resolve(JS_ROOT, '..');

let made = null;

/** The fixtures folder (one subfolder per model: mlp, cnn). */
export function fixturesDir() {
  if (process.env.EDGETRAIN_JS_FIXTURES) return process.env.EDGETRAIN_JS_FIXTURES;
  if (made) return made;
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'edgetrain-js-fixtures-'));
  const python = process.env.PYTHON || 'python3';
  try {
    execFileSync(python, [path.join(REPO, 'tests', 'js_fixtures.py'), out],
      { stdio: ['ignore', 'ignore', 'pipe'], timeout: 600_000 });
  } catch (e) {
    throw new Error(`cannot make the fixtures with ${python} tests/js_fixtures.py (set ` +
      `$PYTHON, or $EDGETRAIN_JS_FIXTURES): ${e.stderr || e.message}`);
  }
  process.env.EDGETRAIN_JS_FIXTURES = out;
  made = out;
  return out;
}

/** Where the tests leave results for tests/test_js.py, if it asked ($EDGETRAIN_JS_OUT). */
export function outDir(model) {
  const base = process.env.EDGETRAIN_JS_OUT;
  if (!base) return null;
  const d = path.join(base, model);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

const ARRAYS = { float32: Float32Array, int64: BigInt64Array };

/** One model's fixtures: {dir, python (its JSON), x, y, probe} with x, y per step. */
export function modelFixtures(model) {
  const dir = path.join(fixturesDir(), model);
  const python = JSON.parse(fs.readFileSync(path.join(dir, 'python.json'), 'utf8'));
  const raw = fs.readFileSync(path.join(dir, 'data.bin'));
  const arrays = {};
  let at = 0;
  for (const a of python.arrays) {
    const Arr = ARRAYS[a.dtype];
    const n = a.shape.reduce((p, d) => p * d, 1);
    const copy = raw.buffer.slice(raw.byteOffset + at, raw.byteOffset + at + n * Arr.BYTES_PER_ELEMENT);
    arrays[a.name] = { data: new Arr(copy), shape: a.shape, dtype: a.dtype };
    at += n * Arr.BYTES_PER_ELEMENT;
  }
  return { dir, python, ...arrays };
}

/** Step `s` of a per-step array as an ort.Tensor. */
export function stepTensor(ort, arr, s) {
  const per = arr.shape.slice(1).reduce((p, d) => p * d, 1);
  return new ort.Tensor(arr.dtype, arr.data.slice(s * per, (s + 1) * per), arr.shape.slice(1));
}

export function tensorOf(ort, arr) {
  return new ort.Tensor(arr.dtype, arr.data.slice(), arr.shape);
}

/** |a - b| <= tol * max(1, |b|) for every pair; returns the largest relative gap. */
export function closeTo(a, b, tol) {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const gap = Math.abs(a[i] - b[i]) / Math.max(1, Math.abs(b[i]));
    if (!(gap <= tol)) throw new Error(`index ${i}: ${a[i]} vs ${b[i]} (gap ${gap} > ${tol})`);
    worst = Math.max(worst, gap);
  }
  return worst;
}
