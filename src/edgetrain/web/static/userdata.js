// The user's own data for the page: a CSV table or a set of images, turned into the model's
// input exactly as docs/web.md describes (and as tests/test_web.py recomputes in Python).
//
// CSV: a header row, then one row per example. One column is the target (chosen in the page);
// every other column is a numeric feature. Features are standardized with the mean and the
// population standard deviation of the training rows (a constant column is only centred).
// Targets: for a classifier, integers 0..K-1 are the classes; any other values are sorted (by
// code point) and numbered. For a regression model the target is the number itself.
//
// Images: each image is resized to the model's input height and width on a canvas, converted
// to gray (0.299 R + 0.587 G + 0.114 B) for one-channel inputs, scaled to [0, 1] (times the
// export's `scale`), optionally inverted (1 - v: dark ink on light paper for a model trained on
// light-on-dark), then normalized with the export's per-channel mean and std when it has them.
// The label is the image's folder name (an image folder with a subfolder per class), or, for
// loose files, the part of the file name before the first "_", "-", " " or ".".
//
// Rows are split into training and held-out rows by splitIndices(seed, n) of the driver.

import { splitIndices } from './edgetrain.js';

export const MAX_CSV_BYTES = 64 << 20;
export const MAX_IMAGES = 5000;
export const MAX_COLUMNS = 4096;
const TARGET_NAMES = ['label', 'target', 'y', 'class', 'species'];

export class DataError extends Error {
  constructor(message) { super(message); this.name = 'DataError'; }
}

// -- CSV --------------------------------------------------------------------------------

/** Rows of a CSV text (RFC 4180: quoted fields, "" escapes, CRLF or LF); empty lines dropped. */
export function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = '';
  let quoted = false;
  let i = 0;
  const delimiter = /^[^\n]*;/.test(text) && !/^[^\n]*,/.test(text) ? ';' : ',';
  const endRow = () => {
    row.push(field);
    field = '';
    if (row.length > 1 || row[0] !== '') rows.push(row);
    row = [];
  };
  while (i < text.length) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i += 2; continue; }
      if (c === '"') { quoted = false; i++; continue; }
      field += c;
      i++;
      continue;
    }
    if (c === '"' && field === '') { quoted = true; i++; continue; }
    if (c === delimiter) { row.push(field); field = ''; i++; continue; }
    if (c === '\r' && text[i + 1] === '\n') { endRow(); i += 2; continue; }
    if (c === '\n' || c === '\r') { endRow(); i++; continue; }
    field += c;
    i++;
  }
  if (quoted) throw new DataError('the CSV ends inside a quoted field');
  if (field !== '' || row.length) endRow();
  return rows;
}

/** {columns, rows} of a CSV file's text: a header row and rows of the same length. */
export function readTable(text) {
  const all = parseCsv(text.replace(/^\uFEFF/, ''));
  if (all.length < 3) throw new DataError('the CSV needs a header row and at least two rows');
  const columns = all[0].map((c) => c.trim());
  if (columns.length < 2 || columns.length > MAX_COLUMNS) {
    throw new DataError(`the CSV has ${columns.length} columns; it needs 2 to ${MAX_COLUMNS}`);
  }
  const rows = all.slice(1);
  rows.forEach((r, i) => {
    if (r.length !== columns.length) {
      throw new DataError(`CSV row ${i + 2} has ${r.length} fields, the header has ${columns.length}`);
    }
  });
  return { columns, rows };
}

/** The column the page picks as target when the user has not chosen: a usual name, or the last. */
export function defaultTarget(columns) {
  const lower = columns.map((c) => c.toLowerCase());
  for (const name of TARGET_NAMES) {
    const i = lower.indexOf(name);
    if (i >= 0) return columns[i];
  }
  return columns[columns.length - 1];
}

function number(text, row, column) {
  const v = text.trim() === '' ? NaN : Number(text);
  if (!Number.isFinite(v)) {
    throw new DataError(`CSV row ${row + 2}, column ${JSON.stringify(column)}: ` +
      `${JSON.stringify(text.slice(0, 40))} is not a number`);
  }
  return v;
}

/**
 * Class indices for raw target values: integers in [0, classes) as they are, anything else
 * sorted by code point and numbered. {labels, names}.
 */
export function classLabels(values, classes) {
  const ints = values.map((v) => (/^\s*-?\d+\s*$/.test(v) ? Number(v) : NaN));
  if (ints.every((v) => Number.isInteger(v) && v >= 0 && v < classes)) {
    return { labels: Int32Array.from(ints), names: Array.from({ length: classes }, (_, k) => String(k)) };
  }
  const names = [...new Set(values.map((v) => v.trim()))].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (names.length > classes) {
    throw new DataError(`the target has ${names.length} different values; the model predicts ` +
      `${classes} classes`);
  }
  const index = new Map(names.map((n, k) => [n, k]));
  return { labels: Int32Array.from(values, (v) => index.get(v.trim())), names };
}

/** Per-feature mean and population standard deviation over `rows` (0 std -> 1). */
export function featureStats(x, features, rows) {
  const mean = new Float64Array(features);
  const std = new Float64Array(features);
  for (const r of rows) for (let j = 0; j < features; j++) mean[j] += x[r * features + j];
  for (let j = 0; j < features; j++) mean[j] /= rows.length;
  for (const r of rows) {
    for (let j = 0; j < features; j++) std[j] += (x[r * features + j] - mean[j]) ** 2;
  }
  for (let j = 0; j < features; j++) std[j] = Math.sqrt(std[j] / rows.length) || 1;
  return { mean: Array.from(mean), std: Array.from(std) };
}

/**
 * The data set of a table for `task` ({features, classes, regression}), target column `target`,
 * split with `seed`; standardized unless `standardize` is false.
 */
export function tableDataset(table, target, task, { seed = 0, standardize = true } = {}) {
  const t = table.columns.indexOf(target);
  if (t < 0) throw new DataError(`the CSV has no column ${JSON.stringify(target)}`);
  const featureCols = table.columns.map((_, j) => j).filter((j) => j !== t);
  if (featureCols.length !== task.features) {
    throw new DataError(`the model takes ${task.features} values per example; the CSV has ` +
      `${featureCols.length} feature columns besides the target ${JSON.stringify(target)}`);
  }
  const n = table.rows.length;
  const f = featureCols.length;
  const raw = new Float64Array(n * f);
  table.rows.forEach((r, i) => featureCols.forEach((j, k) => {
    raw[i * f + k] = number(r[j], i, table.columns[j]);
  }));
  const targets = table.rows.map((r) => r[t]);
  const split = splitIndices(seed, n);
  const stats = standardize ? featureStats(raw, f, split.train) : null;
  const x = new Float32Array(n * f);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < f; k++) {
      x[i * f + k] = stats ? (raw[i * f + k] - stats.mean[k]) / stats.std[k] : raw[i * f + k];
    }
  }
  let labels;
  let names = null;
  if (task.regression) {
    labels = Float32Array.from(targets, (v, i) => number(v, i, target));
  } else {
    ({ labels, names } = classLabels(targets, task.classes));
  }
  return { kind: 'csv', n, sampleSize: f, x, labels, classNames: names, split, stats,
    describe: `CSV: ${n} rows, ${f} features, target ${target}` };
}

// -- images -------------------------------------------------------------------------------

/** The label of an image file: its folder, or the start of its name. */
export function imageLabel(relativePath) {
  const parts = String(relativePath).split('/').filter(Boolean);
  if (parts.length >= 2) return parts[parts.length - 2];
  return parts[0].split(/[_\- .]/)[0];
}

/** Model-space values of one RGBA image (already width x height) in `layout`. */
export function imagePixels(rgba, geometry, { scale, mean, std, invert = false }) {
  const { layout, channels, height, width } = geometry;
  const hw = height * width;
  const out = new Float32Array(channels * hw);
  for (let p = 0; p < hw; p++) {
    const r = rgba[4 * p];
    const g = rgba[4 * p + 1];
    const b = rgba[4 * p + 2];
    const values = channels === 1 ? [0.299 * r + 0.587 * g + 0.114 * b] : [r, g, b];
    values.forEach((v, c) => {
      let s = v * scale;
      if (invert) s = 1 - s;
      if (mean) s -= mean[mean.length === 1 ? 0 : c];
      if (std) s /= std[std.length === 1 ? 0 : c];
      const at = layout === 'NHWC' ? p * channels + c : c * hw + p;  // NCHW, NHW, flat: planes
      out[at] = s;
    });
  }
  return out;
}

/**
 * Decode, resize and convert image files ([{file, path}]) for the model's input geometry:
 * {kind: 'images', x, labels, thumbs (RGBA per image), ...}. Needs a browser (canvas).
 */
export async function imageDataset(entries, geometry, input, task, { seed = 0, invert = false } = {}) {
  if (!geometry) {
    throw new DataError(`the model's input ${input.name} (per example [${input.sample_shape}]) ` +
      'is not an image');
  }
  if (task.regression) throw new DataError('images train classifiers here; this model is a regression');
  const files = entries.filter((e) => /^image\//.test(e.file.type) || /\.(png|jpe?g|gif|bmp|webp)$/i.test(e.path));
  if (files.length < 2) throw new DataError('give at least two images (PNG, JPEG, GIF, BMP or WebP)');
  if (files.length > MAX_IMAGES) throw new DataError(`at most ${MAX_IMAGES} images, got ${files.length}`);
  files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const { width, height } = geometry;
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const g = canvas.getContext('2d', { willReadFrequently: true });
  g.imageSmoothingEnabled = true;
  g.imageSmoothingQuality = 'high';
  const size = geometry.channels * width * height;
  const x = new Float32Array(files.length * size);
  const thumbs = [];
  for (const [i, e] of files.entries()) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(e.file);
    } catch {
      throw new DataError(`${e.path} is not an image this browser can decode`);
    }
    g.clearRect(0, 0, width, height);
    g.fillStyle = '#000';
    g.fillRect(0, 0, width, height);
    g.drawImage(bitmap, 0, 0, width, height);
    bitmap.close();
    const rgba = g.getImageData(0, 0, width, height).data;
    x.set(imagePixels(rgba, geometry, { scale: input.scale, mean: input.mean, std: input.std, invert }),
      i * size);
    thumbs.push(new Uint8ClampedArray(rgba));
  }
  const { labels, names } = classLabels(files.map((e) => imageLabel(e.path)), task.classes);
  const split = splitIndices(seed, files.length);
  return { kind: 'images', n: files.length, sampleSize: size, x, labels, classNames: names, split,
    thumbs, geometry, paths: files.map((e) => e.path),
    describe: `images: ${files.length} (${names.length} classes), resized to ${width}×${height}` };
}

/** Files of a drop: folders walked (their names become labels), loose files as they are. */
export async function droppedFiles(dataTransfer) {
  const out = [];
  const walk = async (entry) => {
    if (out.length > MAX_IMAGES) return;
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, path: entry.fullPath.replace(/^\//, '') });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child);
      }
    }
  };
  const entries = [...dataTransfer.items].map((it) => it.webkitGetAsEntry && it.webkitGetAsEntry())
    .filter(Boolean);
  if (entries.length) {
    for (const entry of entries) await walk(entry);
  } else {
    for (const file of dataTransfer.files) out.push({ file, path: file.name });
  }
  return out;
}
