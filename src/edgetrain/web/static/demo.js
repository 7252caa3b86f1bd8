// The page: fine-tune the exported model in the browser, on the built-in digits (when the export
// embeds them) or on the user's own data: a CSV file or images (see userdata.js).
//
// ?autorun=1&steps=N&seed=S[&batch=B&lr=L&ep=wasm|webgpu&threads=T] trains N steps on seeded
// batches and sets window.edgetrainResult (checked by the test suite); with &data=user it first
// waits for the user's files (a CSV, with &target=COLUMN, or images).

import { batchIndices, download, load } from './edgetrain.js';
import {
  DataError, defaultTarget, droppedFiles, imageDataset, readTable, tableDataset, MAX_CSV_BYTES,
} from './userdata.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const AUTORUN = params.get('autorun') === '1';
const GALLERY = 40;
const PROBE = 16;

let model;
let task;  // what the model takes and predicts: {features, classes, regression, labelSpec}
let data = null;  // the data set in use: see digitsDataset / userdata.js
let digits = null;  // the built-in digits, when the export embeds them
let table = null;  // the user's CSV, parsed, until a target is chosen
const personal = [];  // drawn digits: [{x: Float32Array, label}]
const history = { loss: [], metric: [] };  // [{step, value}]
let before = null;  // predictions of the state when the data set was loaded (gallery)
let selected = 0;
let stopRequested = false;
let busy = false;
let modelReady;
const userData = {};  // resolved when a data set of the user's own is in use
userData.promise = new Promise((resolve) => { userData.resolve = resolve; });

// The page never parses markup from data: names from the manifest or the user's files may be
// anything, so every text goes in through textContent (and the policy forbids inline script).
function el(tag, text, className) {
  const e = document.createElement(tag);
  e.textContent = text;
  if (className) e.className = className;
  return e;
}

function span(text, className) { return el('span', text, className); }

function setStatus(text, error = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', error);
}

function product(dims) { return dims.reduce((a, b) => a * b, 1); }

// -- the model's task -----------------------------------------------------------------------

function taskOf(m) {
  const input = m.manifest.input;
  const sample = input.sample_shape;
  const out = m.signatures.infer.outputs.find((o) => o.name === m.meta.output);
  const labelName = m.inputName('train', 'label');
  const labelSpec = m.signatures.train.inputs.find((s) => s.name === labelName);
  const classification = Boolean(m.meta.classification);
  return {
    input,
    dataName: m.inputName('train', 'data'),
    labelName,
    labelSpec,
    features: sample.every((d) => Number.isInteger(d) && d > 0) ? product(sample) : NaN,
    classes: classification ? Number(out.shape[out.shape.length - 1]) : null,
    regression: !classification,
  };
}

// -- data sets ------------------------------------------------------------------------------

async function digitsDataset(manifest) {
  const info = manifest.dataset;
  if (!info) return null;
  const r = await fetch(info.file);
  if (!r.ok) throw new Error(`cannot fetch ${info.file}: HTTP ${r.status}`);
  const raw = new Uint8Array(await r.arrayBuffer());
  const pixels = raw.subarray(info.x_offset, info.x_offset + info.count * info.features);
  const x = Float32Array.from(pixels, (v) => v * info.scale);
  const labels = Int32Array.from(raw.subarray(info.y_offset, info.y_offset + info.count));
  return { kind: 'digits', n: info.count, sampleSize: info.features, x, labels, pixels, info,
    classNames: Array.from({ length: info.classes }, (_, k) => String(k)),
    split: { train: Array.from({ length: info.train }, (_, i) => i),
      test: Array.from({ length: info.test }, (_, i) => info.train + i) },
    describe: `scikit-learn digits: ${info.train} train, ${info.test} held out` };
}

function makeX(d, indices, extra = []) {  // rows of the data set, then extra rows (drawings)
  const f = d.sampleSize;
  const x = new Float32Array((indices.length + extra.length) * f);
  indices.forEach((i, r) => x.set(d.x.subarray(i * f, (i + 1) * f), r * f));
  extra.forEach((e, r) => x.set(e.x, (indices.length + r) * f));
  return { data: x, dims: [indices.length + extra.length, ...task.input.sample_shape] };
}

function makeY(d, indices, extra = []) {  // as the label input wants: indices, one-hot, values
  const labels = [...indices.map((i) => d.labels[i]), ...extra.map((e) => e.label)];
  const spec = task.labelSpec;
  const n = labels.length;
  const Float = spec.dtype === 'float64' ? Float64Array : Float32Array;
  if (task.regression) {
    const per = product(spec.shape.slice(1).map(Number));
    return { data: Float.from(labels.flatMap((v) => Array(per).fill(v))), dims: [n, ...spec.shape.slice(1)] };
  }
  if (spec.shape.length === 2) {
    const k = Number(spec.shape[1]);
    const y = new Float(n * k);
    labels.forEach((c, r) => { y[r * k + c] = 1; });
    return { data: y, dims: [n, k] };
  }
  const y = spec.dtype === 'int32' ? Int32Array.from(labels) : BigInt64Array.from(labels, (v) => BigInt(v));
  return { data: y, dims: [n] };
}

// -- model calls ------------------------------------------------------------------------------

async function logits(x) {
  return (await model.run('infer', { [task.input.name]: x }))[model.meta.output].data;
}

function argmaxRows(values, classes) {
  const n = values.length / classes;
  return Array.from({ length: n }, (_, r) => {
    let best = 0;
    for (let c = 1; c < classes; c++) if (values[r * classes + c] > values[r * classes + best]) best = c;
    return best;
  });
}

async function evaluate() {
  const idx = data.split.test;
  const out = await model.run('eval', { [task.dataName]: makeX(data, idx),
    [task.labelName]: makeY(data, idx) });
  return { loss: out.loss, accuracy: out.accuracy ?? NaN };
}

function metricOf(ev) { return task.regression ? ev.loss : ev.accuracy; }

function metricValue(value) {
  if (value === undefined || Number.isNaN(value)) return '–';
  return task.regression ? value.toFixed(4) : `${(100 * value).toFixed(1)}%`;
}

function metricText(value) {
  return `${task.regression ? 'held-out loss' : 'held-out accuracy'} ${metricValue(value)}`;
}

/** The header: what trains on what, and the held-out metric now (it changes as training goes). */
function showHeader() {
  const last = history.metric[history.metric.length - 1];
  setStatus(`model loaded on ${model.backend} · ${data.describe} · ${metricText(last && last.value)}` +
    `${last ? ` after ${last.step} step(s)` : ''}`);
}

async function trainStep(rows, lr) {
  const k = data.kind === 'digits' ? Math.min(personal.length, Math.floor(rows.length / 4)) : 0;
  const extra = [];
  for (let i = 0; i < k; i++) extra.push(personal[(history.loss.length * k + i) % personal.length]);
  const used = rows.slice(0, rows.length - k);
  const inputs = { [task.dataName]: makeX(data, used, extra), [task.labelName]: makeY(data, used, extra) };
  if (lr !== undefined) inputs[model.inputName('train', 'lr')] = lr;
  return (await model.run('train', inputs)).loss;
}

function planRows(plan) { return plan.map((b) => Array.from(b, (i) => data.split.train[i])); }

// -- drawing ----------------------------------------------------------------------------------

function drawChart() {
  const c = $('chart');
  const g = c.getContext('2d');
  const W = c.width; const H = c.height;
  const L = 52; const R = 52; const T = 24; const B = 30;
  g.clearRect(0, 0, W, H);
  g.fillStyle = '#fff';
  g.fillRect(0, 0, W, H);
  const regression = task && task.regression;
  const all = [...history.loss, ...history.metric];
  const steps = Math.max(1, ...all.map((p) => p.step));
  const maxLoss = Math.max(0.1, ...history.loss.map((p) => p.value),
    ...(regression ? history.metric.map((p) => p.value) : [])) * 1.08;
  const x = (s) => L + (W - L - R) * (s / steps);
  const yl = (v) => T + (H - T - B) * (1 - v / maxLoss);
  const ya = regression ? yl : (v) => T + (H - T - B) * (1 - v);
  g.strokeStyle = '#e9ecef';
  g.lineWidth = 1;
  g.font = '11px system-ui, sans-serif';
  for (let i = 0; i <= 4; i++) {
    const yy = T + (H - T - B) * (i / 4);
    g.beginPath(); g.moveTo(L, yy); g.lineTo(W - R, yy); g.stroke();
    g.fillStyle = '#d9480f'; g.textAlign = 'right';
    g.fillText((maxLoss * (1 - i / 4)).toFixed(2), L - 6, yy + 4);
    if (!regression) {
      g.fillStyle = '#1971c2'; g.textAlign = 'left';
      g.fillText(`${Math.round(100 * (1 - i / 4))}%`, W - R + 6, yy + 4);
    }
  }
  g.fillStyle = '#66707c'; g.textAlign = 'center';
  for (let i = 0; i <= 5; i++) {
    const s = Math.round(steps * i / 5);
    g.fillText(String(s), x(s), H - B + 16);
  }
  g.fillText('training step', (L + W - R) / 2, H - 3);
  const line = (pts, y, color, dots) => {
    if (!pts.length) return;
    g.strokeStyle = color; g.fillStyle = color; g.lineWidth = 2;
    g.beginPath();
    pts.forEach((p, i) => (i ? g.lineTo(x(p.step), y(p.value)) : g.moveTo(x(p.step), y(p.value))));
    g.stroke();
    if (dots) pts.forEach((p) => { g.beginPath(); g.arc(x(p.step), y(p.value), 2.5, 0, 7); g.fill(); });
  };
  line(history.loss, yl, '#d9480f', history.loss.length <= 60);
  line(history.metric, ya, '#1971c2', history.metric.length <= 60);
  g.textAlign = 'left'; g.font = '12px system-ui, sans-serif';
  g.fillStyle = '#d9480f'; g.fillText('● training loss', L + 4, 15);
  g.fillStyle = '#1971c2';
  g.fillText(regression ? '● held-out loss' : '● held-out accuracy', L + 110, 15);
}

function paintDigit(canvas, pixels, max) {
  const g = canvas.getContext('2d');
  const img = g.createImageData(8, 8);
  for (let i = 0; i < 64; i++) {
    const v = 255 - Math.round(255 * Math.min(1, pixels[i] / max));
    img.data.set([v, v, v, 255], i * 4);
  }
  g.putImageData(img, 0, 0);
}

function thumbnail(i) {  // a canvas showing example i, or null (tabular data)
  const cv = document.createElement('canvas');
  if (data.kind === 'digits') {
    cv.width = 8; cv.height = 8;
    paintDigit(cv, data.pixels.subarray(i * 64, (i + 1) * 64), data.info.pixel_max);
  } else if (data.kind === 'images') {
    cv.width = data.geometry.width; cv.height = data.geometry.height;
    cv.getContext('2d').putImageData(new ImageData(data.thumbs[i], cv.width, cv.height), 0, 0);
  } else {
    return null;
  }
  return cv;
}

async function updateGallery() {
  const box = $('gallery');
  box.closest('section').hidden = data.kind === 'csv' || task.regression;
  if (box.closest('section').hidden) return;
  const idx = data.split.test.slice(0, GALLERY);
  const preds = argmaxRows(await logits(makeX(data, idx)), task.classes);
  if (!before) before = preds;
  box.classList.toggle('names', data.kind !== 'digits');  // longer class names: wider cells
  if (!box.children.length) {
    idx.forEach((i, k) => {
      const cell = document.createElement('div');
      cell.className = 'digit';
      cell.append(thumbnail(i), document.createElement('div'));
      if (data.kind === 'digits') cell.onclick = () => { selected = k; showOnPad(i); };
      box.append(cell);
    });
  }
  const name = (c) => (data.classNames && data.classNames[c] !== undefined ? data.classNames[c] : String(c));
  [...box.children].forEach((cell, k) => {
    const truth = data.labels[idx[k]];
    const cls = (p) => (p === truth ? 'ok' : 'bad');
    cell.classList.toggle('selected', k === selected && data.kind === 'digits');
    cell.lastChild.replaceChildren(`${name(truth)} · `, span(name(before[k]), cls(before[k])), ' → ',
      span(name(preds[k]), cls(preds[k])));
  });
}

function showOnPad(i) {
  const pad = $('pad');
  const g = pad.getContext('2d');
  const px = data.pixels.subarray(i * 64, (i + 1) * 64);
  g.fillStyle = '#000'; g.fillRect(0, 0, pad.width, pad.height);
  const cell = pad.width / 8;
  for (let k = 0; k < 64; k++) {
    const v = Math.round(255 * px[k] / data.info.pixel_max);
    g.fillStyle = `rgb(${v},${v},${v})`;
    g.fillRect((k % 8) * cell, Math.floor(k / 8) * cell, cell, cell);
  }
  $('label').value = String(data.labels[i]);
  $('add').disabled = true;  // already in the data set
  return predictPixels(Float32Array.from(px, (v) => v * data.info.scale));
}

function padPixels() {  // the drawing, cropped to its ink, scaled into 8x8 like the digits data
  const pad = $('pad');
  const g = pad.getContext('2d');
  const { data: rgba, width, height } = g.getImageData(0, 0, pad.width, pad.height);
  let x0 = width; let y0 = height; let x1 = -1; let y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (rgba[(y * width + x) * 4] > 40) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  if (x1 < 0) return null;
  const side = Math.max(x1 - x0, y1 - y0) + 1;
  const cx = (x0 + x1) / 2; const cy = (y0 + y1) / 2;
  const small = document.createElement('canvas');
  small.width = 32; small.height = 32;
  const s = small.getContext('2d');
  s.fillStyle = '#000'; s.fillRect(0, 0, 32, 32);
  s.imageSmoothingQuality = 'high';
  s.drawImage(pad, cx - side / 2, cy - side / 2, side, side, 2, 2, 28, 28);
  const px = s.getImageData(0, 0, 32, 32).data;
  const max = digits.info.pixel_max;
  const out = new Float32Array(64);
  for (let r = 0; r < 8; r++) {
    for (let c = 0; c < 8; c++) {
      let sum = 0;
      for (let dy = 0; dy < 4; dy++) for (let dx = 0; dx < 4; dx++) sum += px[((r * 4 + dy) * 32 + c * 4 + dx) * 4];
      out[r * 8 + c] = Math.min(max, Math.round((sum / 16 / 255) * max * 1.6)) * digits.info.scale;
    }
  }
  return out;
}

function drawProbs(probs) {
  const c = $('probs');
  const g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  g.font = '12px system-ui, sans-serif';
  const rowH = c.height / 10;
  const best = probs ? probs.indexOf(Math.max(...probs)) : -1;
  for (let k = 0; k < 10; k++) {
    const y = k * rowH;
    g.fillStyle = '#66707c';
    g.fillText(String(k), 2, y + rowH * 0.72);
    g.fillStyle = '#edf0f3';
    g.fillRect(16, y + 2, c.width - 56, rowH - 4);
    if (probs) {
      g.fillStyle = k === best ? '#1971c2' : '#a5c8ea';
      g.fillRect(16, y + 2, (c.width - 56) * probs[k], rowH - 4);
      g.fillStyle = '#1d232b';
      g.fillText(`${Math.round(100 * probs[k])}%`, c.width - 36, y + rowH * 0.72);
    }
  }
}

async function predictPad() {
  const x = padPixels();
  $('add').disabled = !x;
  if (!x) { drawProbs(null); return; }
  await predictPixels(x);
}

async function predictPixels(x) {
  const z = await logits({ data: x, dims: [1, ...task.input.sample_shape] });
  const m = Math.max(...z);
  const e = Array.from(z, (v) => Math.exp(v - m));
  const sum = e.reduce((a, b) => a + b, 0);
  drawProbs(e.map((v) => v / sum));
}

function setupPad() {
  const pad = $('pad');
  const g = pad.getContext('2d', { willReadFrequently: true });  // read back on every stroke
  g.fillStyle = '#000'; g.fillRect(0, 0, pad.width, pad.height);
  let drawing = false;
  let last = null;
  const pos = (e) => {
    const r = pad.getBoundingClientRect();
    return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
  };
  pad.addEventListener('pointerdown', (e) => { drawing = true; last = pos(e); pad.setPointerCapture(e.pointerId); });
  pad.addEventListener('pointermove', (e) => {
    if (!drawing) return;
    const p = pos(e);
    g.strokeStyle = '#fff'; g.lineWidth = 15; g.lineCap = 'round';
    g.beginPath(); g.moveTo(...last); g.lineTo(...p); g.stroke();
    last = p;
  });
  const end = () => { if (drawing) { drawing = false; predictPad(); } };
  pad.addEventListener('pointerup', end);
  pad.addEventListener('pointercancel', end);
  $('clear').onclick = () => { g.fillStyle = '#000'; g.fillRect(0, 0, pad.width, pad.height); predictPad(); };
  for (let k = 0; k < 10; k++) $('label').append(new Option(String(k), String(k)));
  $('add').onclick = () => {
    const x = padPixels();
    if (!x) return;
    personal.push({ x, label: Number($('label').value) });
    $('draw-status').textContent = `${personal.length} example(s) of your own join each batch.`;
  };
  drawProbs(null);
}

// -- the user's data --------------------------------------------------------------------------

/** Make `d` the data set in use: history, gallery and header start over on it. */
async function useData(d) {
  data = d;
  before = null;
  selected = 0;
  history.loss.length = 0;
  history.metric.length = 0;
  $('gallery').replaceChildren();
  $('draw-card').hidden = d.kind !== 'digits';
  if (d.split.test.length) {
    const ev = await evaluate();
    history.metric.push({ step: 0, value: metricOf(ev) });
  }
  await updateGallery();
  drawChart();
  showHeader();
  $('train').disabled = busy;
  $('data-status').textContent = `${d.describe}; ${d.split.train.length} training and ` +
    `${d.split.test.length} held-out examples`;
  $('data-status').classList.remove('error');
  if (d.kind !== 'digits') userData.resolve(d);
}

function dataFailed(e) {
  $('data-status').textContent = e instanceof DataError ? e.message : `cannot use these files: ${e.message}`;
  $('data-status').classList.add('error');
  if (AUTORUN && params.get('data') === 'user') {
    window.edgetrainResult = { ok: false, error: $('data-status').textContent };
  }
}

async function guarded(fn) {
  try {
    await modelReady;
    if (busy) throw new DataError('wait until training stops');
    await fn();
  } catch (e) {
    dataFailed(e);
  }
}

function useTable() {
  return guarded(async () => {
    const d = tableDataset(table, $('target').value, task,
      { seed: Number($('seed').value), standardize: $('standardize').checked });
    await useData(d);
  });
}

async function readCsv(file) {
  if (file.size > MAX_CSV_BYTES) throw new DataError(`${file.name} is larger than ${MAX_CSV_BYTES} bytes`);
  table = readTable(await file.text());
  const want = params.get('target');
  const target = want !== null && table.columns.includes(want) ? want : defaultTarget(table.columns);
  $('target').replaceChildren(...table.columns.map((c) => new Option(c, c)));
  $('target').value = target;
  $('target').disabled = false;
}

function useImages(entries) {
  return guarded(async () => {
    $('data-status').textContent = `decoding ${entries.length} file(s)…`;
    const d = await imageDataset(entries, task.input.image, task.input, task,
      { seed: Number($('seed').value), invert: $('invert').checked });
    await useData(d);
  });
}

function setupUserData() {  // before the model loads: files given early wait for it
  $('csv').onchange = async (e) => {
    const f = e.target.files[0];
    e.target.value = '';
    if (!f) return;
    await guarded(() => readCsv(f));
    if (table) await useTable();
  };
  $('target').onchange = () => useTable();
  $('standardize').onchange = () => { if (table && data && data.kind === 'csv') useTable(); };
  const pick = async (e) => {
    const entries = [...e.target.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
    e.target.value = '';
    if (entries.length) await useImages(entries);
  };
  $('images').onchange = pick;
  $('image-folder').onchange = pick;
  document.addEventListener('dragover', (e) => { e.preventDefault(); document.body.classList.add('dropping'); });
  document.addEventListener('dragleave', () => document.body.classList.remove('dropping'));
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    document.body.classList.remove('dropping');
    const files = droppedFiles(e.dataTransfer);  // reads the items before the event ends
    files.then((entries) => {
      const csv = entries.find((x) => /\.csv$/i.test(x.path));
      if (csv && entries.length === 1) {
        guarded(() => readCsv(csv.file)).then(() => table && useTable());
      } else if (entries.length) {
        useImages(entries);
      }
    }, dataFailed);
  });
}

// -- UI training ------------------------------------------------------------------------------

function setBusy(b) {
  busy = b;
  for (const id of ['train', 'save', 'restore', 'download', 'reset']) $(id).disabled = b || (id === 'train' && !data);
  $('stop').disabled = !b;
}

async function record(step, loss, every) {
  history.loss.push({ step, value: loss });
  if (step % every === 0 && data.split.test.length) {
    const ev = await evaluate();
    history.metric.push({ step, value: metricOf(ev) });
    showHeader();
  }
}

async function trainUI() {
  if (busy || !data) return;
  setBusy(true);
  stopRequested = false;
  const steps = Number($('steps').value);
  const batch = Number($('batch').value);
  const lr = Number($('lr').value);
  const seed = Number($('seed').value) + history.loss.length;
  const plan = planRows(batchIndices(seed, steps, batch, data.split.train.length));
  const every = Math.max(1, Math.round(steps / 40));
  const start = history.loss.length;
  const t0 = performance.now();
  try {
    for (let s = 0; s < steps && !stopRequested; s++) {
      const loss = await trainStep(plan[s], lr);
      await record(start + s + 1, loss, s === steps - 1 ? 1 : every);
      if (s % 5 === 4 || s === steps - 1) {
        const last = history.metric[history.metric.length - 1];
        $('progress').textContent = `step ${start + s + 1} · loss ${loss.toFixed(4)} · ` +
          `${metricText(last && last.value)} · ${((performance.now() - t0) / (s + 1)).toFixed(1)} ms/step`;
        drawChart();
        await new Promise(requestAnimationFrame);
      }
    }
    await updateGallery();
    drawChart();
    showHeader();
  } catch (e) {
    setStatus(`training failed: ${e.message}`, true);
  } finally {
    setBusy(false);
  }
}

async function stateAction(fn, done) {
  if (busy) return;
  setBusy(true);
  try {
    await fn();
    $('state-status').textContent = done;
    if (data) {
      await updateGallery();
      if (data.split.test.length) {
        history.metric.push({ step: history.loss.length, value: metricOf(await evaluate()) });
        showHeader();
      }
    }
  } catch (e) {
    $('state-status').textContent = e.message;
  } finally {
    setBusy(false);
  }
}

function showModelInfo() {
  const m = model.manifest;
  const meta = model.meta;
  const count = (names) => names.reduce((n, k) => n + (m.state.tensors[k]
    ? m.state.tensors[k].shape.reduce((a, b) => a * b, 1) : 0), 0);
  const opt = meta.optimizer || {};
  const img = m.input.image;
  const rows = [
    ['backend', `${model.backend}${model.backend === 'wasm'
      ? ` · ${model.ort.env.wasm.numThreads || 1} thread(s)` : ''}`],
    ['signatures', Object.keys(meta.signatures).join(', ')],
    ['trainable', `${meta.trainable.length} tensors, ${count(meta.trainable).toLocaleString()} values`],
    ['frozen', `${meta.frozen.length} tensors`],
    ['loss', meta.loss ? meta.loss.name : '–'],
    ['optimizer', `${opt.name || '–'} (lr ${opt.lr ?? '–'})`],
    ['input', `${m.input.name} [${m.input.sample_shape}]${img ? ` · images ${img.width}×${img.height}, ` +
      `${img.channels === 1 ? 'gray' : 'RGB'}` : ''}`],
    ['data', m.dataset ? `scikit-learn digits: ${m.dataset.train} train, ${m.dataset.test} held out`
      : 'none embedded: load a CSV or images'],
  ];
  $('model-info').replaceChildren(...rows.flatMap(([k, v]) => [el('dt', k), el('dd', v)]));
  $('ort-version').textContent = m.onnxruntime_web.version;
  if (opt.lr) $('lr').value = String(opt.lr);
  $('batch').value = String(params.get('batch') || m.batch_size || 32);
  if (params.has('seed')) $('seed').value = String(Number(params.get('seed')));
  $('image-inputs').hidden = !img;
}

// -- autorun ----------------------------------------------------------------------------------

function b64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

async function saveRestore(probe, seed, batch, lr) {
  // Save / restore round trip: save, train on, restore, compare the inference outputs.
  const saved = Array.from(await logits(probe));
  await model.save('autorun');
  const ck = await model.checkpoint();
  const extra = planRows(batchIndices(seed + 1, 3, batch, data.split.train.length));
  for (const b of extra) await trainStep(b, lr);
  const perturbed = Array.from(await logits(probe));
  await model.restore('autorun');
  const restoredIdb = Array.from(await logits(probe));
  for (const b of extra) await trainStep(b, lr);
  await model.loadCheckpoint(ck);
  const restoredFile = Array.from(await logits(probe));
  return { ck, save_restore: { saved, perturbed, restored_idb: restoredIdb, restored_file: restoredFile } };
}

async function autorun() {
  const steps = Number(params.get('steps') || 20);
  const seed = Number(params.get('seed') || 0);
  const batch = Number(params.get('batch') || model.manifest.batch_size || 32);
  const lr = params.has('lr') ? Number(params.get('lr')) : undefined;
  const probeIdx = data.split.test.slice(0, PROBE);
  const probe = makeX(data, probeIdx);
  const t0 = performance.now();
  const probeBefore = Array.from(await logits(probe));
  const evBefore = await evaluate();
  const plan = batchIndices(seed, steps, batch, data.split.train.length);
  const losses = [];
  const every = Math.max(1, Math.round(steps / 40));
  const tTrain = performance.now();
  for (const [s, rows] of planRows(plan).entries()) {
    losses.push(await trainStep(rows, lr));
    await record(s + 1, losses[s], s === steps - 1 ? 1 : every);
  }
  const msPerStep = (performance.now() - tTrain) / steps;
  const after = Array.from(await logits(probe));
  const ev = await evaluate();
  // A step with a NaN learning rate must be refused and change nothing.
  const stepBefore = await model.step();
  let refused = null;
  try {
    await trainStep(planRows(plan)[0], NaN);
  } catch (e) {
    refused = { name: e.name, message: e.message };
  }
  const afterNaN = Array.from(await logits(probe));
  const nonfinite = { refused, step_before: stepBefore, step_after: await model.step(),
    unchanged: afterNaN.every((v, i) => v === after[i]) };
  const { ck, save_restore: saveRestoreResult } = await saveRestore(probe, seed, batch, lr);
  await updateGallery();
  if (data.kind === 'digits') await showOnPad(data.split.test[selected]);
  drawChart();
  showHeader();
  $('steps').value = String(steps);
  $('progress').textContent = `autorun: ${steps} steps (seed ${seed}, batch ${batch}) · final loss ` +
    `${losses[losses.length - 1].toFixed(4)} · ${metricText(metricOf(evBefore))} → ` +
    `${metricValue(metricOf(ev))} · ${msPerStep.toFixed(1)} ms/step`;
  $('state-status').textContent = 'autorun: saved in IndexedDB, trained on, restored: outputs ' +
    `${saveRestoreResult.restored_idb.every((v, i) => v === saveRestoreResult.saved[i]) ? 'identical' : 'DIFFER'}`;
  return {
    ok: true,
    kind: data.kind,
    backend: model.backend,
    threads: model.ort.env.wasm.numThreads || 1,
    onnxruntime_web: model.manifest.onnxruntime_web.version,
    steps, seed, batch_size: batch,
    losses,
    indices: plan.map((b) => Array.from(b)),
    split: data.split,
    accuracy: ev.accuracy,
    test_loss: ev.loss,
    accuracy_before: evBefore.accuracy,
    test_loss_before: evBefore.loss,
    header: $('status').textContent,
    step: await model.step(),
    probe: { indices: probeIdx, before: probeBefore, after },
    save_restore: saveRestoreResult,
    nonfinite,
    checkpoint_b64: b64(ck),
    data: data.kind === 'digits' ? null : {
      x_b64: b64(new Uint8Array(data.x.buffer, data.x.byteOffset, data.x.byteLength)),
      labels: Array.from(data.labels), class_names: data.classNames, stats: data.stats || null,
      paths: data.paths || null, sample_size: data.sampleSize,
    },
    ms_per_step: msPerStep,
    seconds: (performance.now() - t0) / 1000,
  };
}

// -- main -------------------------------------------------------------------------------------

async function start() {
  const backend = params.get('ep') || (AUTORUN ? 'wasm' : 'auto');
  const threads = params.has('threads') ? Number(params.get('threads')) : undefined;
  model = await load('./', { backend, numThreads: threads });
  task = taskOf(model);
  showModelInfo();
  drawChart();
  $('train').onclick = trainUI;
  $('stop').onclick = () => { stopRequested = true; };
  $('save').onclick = () => stateAction(() => model.save('demo'), 'saved in this browser (IndexedDB)');
  $('restore').onclick = () => stateAction(() => model.restore('demo'), 'restored from IndexedDB');
  $('download').onclick = () => stateAction(() => download(model, 'edgetrain-checkpoint.safetensors'),
    'checkpoint downloaded');
  $('reset').onclick = () => stateAction(() => model.reset(), 'back to the exported state');
  $('upload').onchange = async (e) => {
    const f = e.target.files[0];
    if (f) await stateAction(async () => model.loadCheckpoint(await f.arrayBuffer()), `loaded ${f.name}`);
    e.target.value = '';
  };
  setBusy(false);
  digits = await digitsDataset(model.manifest);
  if (digits) {
    setupPad();
    await useData(digits);
  } else {
    $('draw-card').hidden = true;
    $('gallery').closest('section').hidden = true;
    setStatus(`model loaded on ${model.backend}; load a CSV file or images below to train it`);
  }
  setBusy(false);
}

async function main() {
  setupUserData();
  modelReady = start();
  await modelReady;
  window.edgetrainReady = true;
  if (!AUTORUN) return;
  if (params.get('data') === 'user') {
    setStatus('waiting for your data (a CSV file or images)…');
    await userData.promise;
  } else if (!data) {
    throw new Error('this export embeds no data set: autorun with &data=user and give it files');
  }
  setBusy(true);
  setStatus(`autorun on ${model.backend}…`);
  const result = await autorun();
  setBusy(false);
  window.edgetrainResult = result;
}

main().catch((e) => {
  console.error(e);
  setStatus(`error: ${e.message}`, true);
  window.edgetrainReady = true;
  window.edgetrainResult = { ok: false, error: String(e && e.message ? e.message : e), stack: e && e.stack };
});
