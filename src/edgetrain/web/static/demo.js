// The demo page: fine-tune the exported model on digits in the browser.
// ?autorun=1&steps=N&seed=S[&batch=B&lr=L&ep=wasm|webgpu&threads=T] trains N steps on the seeded batches
// of edgetrain.js's batchIndices and sets window.edgetrainResult (checked by the test suite).

import { batchIndices, load } from './edgetrain.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const AUTORUN = params.get('autorun') === '1';
const GALLERY = 40;
const PROBE = 16;

let model;
let data = null;  // {pixels, labels, info, trainIdx, testIdx, testX, testY}
const personal = [];  // [{pixels: Uint8Array(64), label}]
const history = { loss: [], acc: [] };  // [{step, value}]
let before = null;  // predictions of the initial state on the gallery digits
let selected = 0;
let stopRequested = false;
let busy = false;

// The page never parses markup from data: names from the manifest may be anything, so every
// text goes in through textContent (and the Content-Security-Policy forbids inline script).
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

// -- data ---------------------------------------------------------------------------------

async function loadData(manifest) {
  const info = manifest.dataset;
  if (!info) return null;
  const r = await fetch(info.file);
  if (!r.ok) throw new Error(`cannot fetch ${info.file}: HTTP ${r.status}`);
  const raw = new Uint8Array(await r.arrayBuffer());
  const pixels = raw.subarray(info.x_offset, info.x_offset + info.count * info.features);
  const labels = raw.subarray(info.y_offset, info.y_offset + info.count);
  const testIdx = Array.from({ length: info.test }, (_, i) => info.train + i);
  const d = { pixels, labels, info, testIdx };
  d.testX = makeX(d, testIdx);
  d.testY = makeY(d, testIdx);
  return d;
}

function rows(d, indices, extra = []) {  // pixel rows of dataset indices plus personal examples
  const f = d.info.features;
  return [...indices.map((i) => d.pixels.subarray(i * f, (i + 1) * f)),
    ...extra.map((e) => e.pixels)];
}

function makeX(d, indices, extra = []) {
  const f = d.info.features;
  const x = new Float32Array((indices.length + extra.length) * f);
  rows(d, indices, extra).forEach((row, r) => {
    for (let j = 0; j < f; j++) x[r * f + j] = row[j] * d.info.scale;
  });
  return { data: x, dims: [indices.length + extra.length, ...d.info.sample_shape] };
}

function makeY(d, indices, extra = []) {  // class indices, or one-hot rows if the model wants them
  const labels = [...indices.map((i) => d.labels[i]), ...extra.map((e) => e.label)];
  const spec = model.signatures.train.inputs.find((s) => s.name === model.manifest.label);
  const n = labels.length;
  if (spec.shape.length === 2) {
    const k = d.info.classes;
    const y = spec.dtype === 'float64' ? new Float64Array(n * k) : new Float32Array(n * k);
    labels.forEach((c, r) => { y[r * k + c] = 1; });
    return { data: y, dims: [n, k] };
  }
  const y = spec.dtype === 'int32' ? Int32Array.from(labels) : BigInt64Array.from(labels, BigInt);
  return { data: y, dims: [n] };
}

// -- model calls --------------------------------------------------------------------------

function inputName() { return model.signatures.infer.inputs[0].name; }  // the model's own name

async function logits(x) {
  const out = await model.run('infer', { [inputName()]: x });
  return out[model.manifest.output].data;
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
  const out = await model.run('eval', { [inputName()]: data.testX, [model.manifest.label]: data.testY });
  return { loss: Number(out.loss.data[0]), accuracy: out.accuracy ? Number(out.accuracy.data[0]) : NaN };
}

async function trainStep(indices, lr) {
  const k = Math.min(personal.length, Math.floor(indices.length / 4));
  const extra = [];
  for (let i = 0; i < k; i++) extra.push(personal[(history.loss.length * k + i) % personal.length]);
  const used = k ? Array.from(indices.slice(0, indices.length - k)) : Array.from(indices);
  const inputs = { [inputName()]: makeX(data, used, extra),
    [model.manifest.label]: makeY(data, used, extra) };
  if (lr !== undefined) inputs.lr = lr;
  const out = await model.run('train', inputs);
  return Number(out.loss.data[0]);
}

// -- drawing ------------------------------------------------------------------------------

function drawChart() {
  const c = $('chart');
  const g = c.getContext('2d');
  const W = c.width; const H = c.height;
  const L = 52; const R = 52; const T = 24; const B = 30;
  g.clearRect(0, 0, W, H);
  g.fillStyle = '#fff';
  g.fillRect(0, 0, W, H);
  const steps = Math.max(1, ...history.loss.map((p) => p.step), ...history.acc.map((p) => p.step));
  const maxLoss = Math.max(0.1, ...history.loss.map((p) => p.value)) * 1.08;
  const x = (s) => L + (W - L - R) * (s / steps);
  const yl = (v) => T + (H - T - B) * (1 - v / maxLoss);
  const ya = (v) => T + (H - T - B) * (1 - v);
  g.strokeStyle = '#e9ecef';
  g.lineWidth = 1;
  g.font = '11px system-ui, sans-serif';
  for (let i = 0; i <= 4; i++) {
    const yy = T + (H - T - B) * (i / 4);
    g.beginPath(); g.moveTo(L, yy); g.lineTo(W - R, yy); g.stroke();
    g.fillStyle = '#d9480f'; g.textAlign = 'right';
    g.fillText((maxLoss * (1 - i / 4)).toFixed(2), L - 6, yy + 4);
    g.fillStyle = '#1971c2'; g.textAlign = 'left';
    g.fillText(`${Math.round(100 * (1 - i / 4))}%`, W - R + 6, yy + 4);
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
  line(history.acc, ya, '#1971c2', history.acc.length <= 60);
  g.textAlign = 'left'; g.font = '12px system-ui, sans-serif';
  g.fillStyle = '#d9480f'; g.fillText('● training loss', L + 4, 15);
  g.fillStyle = '#1971c2'; g.fillText('● held-out accuracy', L + 110, 15);
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

async function updateGallery() {
  const idx = data.testIdx.slice(0, GALLERY);
  const preds = argmaxRows(await logits(makeX(data, idx)), data.info.classes);
  if (!before) before = preds;
  const box = $('gallery');
  if (!box.children.length) {
    idx.forEach((i, k) => {
      const cell = document.createElement('div');
      cell.className = 'digit';
      const cv = document.createElement('canvas');
      cv.width = 8; cv.height = 8;
      paintDigit(cv, rows(data, [i])[0], data.info.pixel_max);
      const label = document.createElement('div');
      cell.append(cv, label);
      cell.onclick = () => { selected = k; showOnPad(i); };
      box.append(cell);
    });
  }
  [...box.children].forEach((cell, k) => {
    const truth = data.labels[idx[k]];
    const cls = (p) => (p === truth ? 'ok' : 'bad');
    cell.classList.toggle('selected', k === selected);
    cell.lastChild.replaceChildren(`${truth} · `, span(String(before[k]), cls(before[k])), '→',
      span(String(preds[k]), cls(preds[k])));
  });
}

function showOnPad(i) {
  const pad = $('pad');
  const g = pad.getContext('2d');
  const px = rows(data, [i])[0];
  g.fillStyle = '#000'; g.fillRect(0, 0, pad.width, pad.height);
  const cell = pad.width / 8;
  for (let k = 0; k < 64; k++) {
    const v = Math.round(255 * px[k] / data.info.pixel_max);
    g.fillStyle = `rgb(${v},${v},${v})`;
    g.fillRect((k % 8) * cell, Math.floor(k / 8) * cell, cell, cell);
  }
  $('label').value = String(data.labels[i]);
  $('add').disabled = true;  // already in the data set
  return predictPixels(px);
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
  const out = new Uint8Array(64);
  for (let r = 0; r < 8; r++) {
    for (let c = 0; c < 8; c++) {
      let sum = 0;
      for (let dy = 0; dy < 4; dy++) for (let dx = 0; dx < 4; dx++) sum += px[((r * 4 + dy) * 32 + c * 4 + dx) * 4];
      out[r * 8 + c] = Math.min(data.info.pixel_max, Math.round((sum / 16 / 255) * data.info.pixel_max * 1.6));
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
  const px = padPixels();
  $('add').disabled = !px;
  if (!px) { drawProbs(null); return; }
  await predictPixels(px);
}

async function predictPixels(px) {
  const x = new Float32Array(64);
  for (let i = 0; i < 64; i++) x[i] = px[i] * data.info.scale;
  const z = await logits({ data: x, dims: [1, ...data.info.sample_shape] });
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
    const px = padPixels();
    if (!px) return;
    personal.push({ pixels: px, label: Number($('label').value) });
    $('draw-status').textContent = `${personal.length} example(s) of your own join each batch.`;
  };
  drawProbs(null);
}

// -- UI training --------------------------------------------------------------------------

function setBusy(b) {
  busy = b;
  for (const id of ['train', 'save', 'restore', 'download', 'reset']) $(id).disabled = b;
  $('stop').disabled = !b;
}

async function record(step, loss, every) {
  history.loss.push({ step, value: loss });
  if (step % every === 0) {
    const ev = await evaluate();
    history.acc.push({ step, value: ev.accuracy });
  }
}

async function trainUI() {
  if (busy) return;
  setBusy(true);
  stopRequested = false;
  const steps = Number($('steps').value);
  const batch = Number($('batch').value);
  const lr = Number($('lr').value);
  const seed = Number($('seed').value) + history.loss.length;
  const plan = batchIndices(seed, steps, batch, data.info.train);
  const every = Math.max(1, Math.round(steps / 40));
  const start = history.loss.length;
  const t0 = performance.now();
  try {
    for (let s = 0; s < steps && !stopRequested; s++) {
      const loss = await trainStep(plan[s], lr);
      await record(start + s + 1, loss, every);
      if (s % 5 === 4 || s === steps - 1) {
        const last = history.acc[history.acc.length - 1];
        $('progress').textContent = `step ${start + s + 1} · loss ${loss.toFixed(4)} · ` +
          `held-out accuracy ${last ? (100 * last.value).toFixed(1) : '–'}% · ` +
          `${((performance.now() - t0) / (s + 1)).toFixed(1)} ms/step`;
        drawChart();
        await new Promise(requestAnimationFrame);
      }
    }
    await updateGallery();
    drawChart();
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
    if (data) await updateGallery();
  } catch (e) {
    $('state-status').textContent = e.message;
  } finally {
    setBusy(false);
  }
}

function showModelInfo() {
  const m = model.manifest;
  const count = (names) => names.reduce((n, k) => n + (m.state.tensors[k]
    ? m.state.tensors[k].shape.reduce((a, b) => a * b, 1) : 0), 0);
  const opt = m.optimizer || {};
  const rows = [
    ['backend', `${model.backend}${model.backend === 'wasm'
      ? ` · ${model.ort.env.wasm.numThreads || 1} thread(s)` : ''}`],
    ['signatures', Object.keys(m.signatures).join(', ')],
    ['trainable', `${m.trainable.length} tensors, ${count(m.trainable).toLocaleString()} values`],
    ['frozen', `${m.frozen.length} tensors`],
    ['loss', m.loss ? m.loss.name : '–'],
    ['optimizer', `${opt.name || '–'} (lr ${opt.lr ?? '–'})`],
    ['data', m.dataset ? `scikit-learn digits: ${m.dataset.train} train, ${m.dataset.test} held out`
      : 'none embedded'],
  ];
  $('model-info').replaceChildren(...rows.flatMap(([k, v]) => [el('dt', k), el('dd', v)]));
  $('ort-version').textContent = m.onnxruntime_web.version;
  if (opt.lr) $('lr').value = String(opt.lr);
  $('batch').value = String(params.get('batch') || m.batch_size || 32);
}

// -- autorun ------------------------------------------------------------------------------

function b64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

async function autorun() {
  const steps = Number(params.get('steps') || 20);
  const seed = Number(params.get('seed') || 0);
  const batch = Number(params.get('batch') || model.manifest.batch_size || 32);
  const lr = params.has('lr') ? Number(params.get('lr')) : undefined;
  const probe = makeX(data, data.testIdx.slice(0, PROBE));
  const t0 = performance.now();
  const probeBefore = Array.from(await logits(probe));
  const evBefore = await evaluate();
  history.acc.push({ step: 0, value: evBefore.accuracy });
  const plan = batchIndices(seed, steps, batch, data.info.train);
  const losses = [];
  const every = Math.max(1, Math.round(steps / 40));
  const tTrain = performance.now();
  for (let s = 0; s < steps; s++) {
    const loss = await trainStep(plan[s], lr);
    losses.push(loss);
    await record(s + 1, loss, every);
  }
  const msPerStep = (performance.now() - tTrain) / steps;
  const saved = Array.from(await logits(probe));
  const ev = await evaluate();
  // A step with a NaN learning rate must be refused and change nothing.
  const stepBefore = await model.step();
  let refused = null;
  try {
    await trainStep(plan[0], NaN);
  } catch (e) {
    refused = { name: e.name, message: e.message };
  }
  const afterNaN = Array.from(await logits(probe));
  const nonfinite = { refused, step_before: stepBefore, step_after: await model.step(),
    unchanged: afterNaN.every((v, i) => v === saved[i]) };
  // Save / restore round trip: save, train on, restore, compare the inference outputs.
  await model.save('autorun');
  const ck = await model.checkpoint();
  const extra = batchIndices(seed + 1, 3, batch, data.info.train);
  for (const b of extra) await trainStep(b, lr);
  const perturbed = Array.from(await logits(probe));
  await model.restore('autorun');
  const restoredIdb = Array.from(await logits(probe));
  for (const b of extra) await trainStep(b, lr);
  await model.loadCheckpoint(ck);
  const restoredFile = Array.from(await logits(probe));
  await updateGallery();
  await showOnPad(data.testIdx[selected]);
  drawChart();
  $('steps').value = String(steps);
  $('seed').value = String(seed);
  $('progress').textContent = `autorun: ${steps} steps (seed ${seed}, batch ${batch}) · final loss ` +
    `${losses[losses.length - 1].toFixed(4)} · held-out accuracy ${(100 * evBefore.accuracy).toFixed(1)}%` +
    ` → ${(100 * ev.accuracy).toFixed(1)}% · ${msPerStep.toFixed(1)} ms/step`;
  $('state-status').textContent = 'autorun: saved in IndexedDB, trained on, restored: outputs ' +
    `${restoredIdb.every((v, i) => v === saved[i]) ? 'identical' : 'DIFFER'}`;
  return {
    ok: true,
    backend: model.backend,
    threads: model.ort.env.wasm.numThreads || 1,
    onnxruntime_web: model.manifest.onnxruntime_web.version,
    steps, seed, batch_size: batch,
    losses,
    indices: plan.map((b) => Array.from(b)),
    accuracy: ev.accuracy,
    test_loss: ev.loss,
    accuracy_before: evBefore.accuracy,
    step: await model.step(),
    probe: { indices: data.testIdx.slice(0, PROBE), before: probeBefore, after: saved },
    save_restore: { saved, perturbed, restored_idb: restoredIdb, restored_file: restoredFile },
    nonfinite,
    checkpoint_b64: b64(ck),
    ms_per_step: msPerStep,
    seconds: (performance.now() - t0) / 1000,
  };
}

// -- main ---------------------------------------------------------------------------------

async function main() {
  const backend = params.get('ep') || (AUTORUN ? 'wasm' : 'auto');
  const threads = params.has('threads') ? Number(params.get('threads')) : undefined;
  model = await load('./', { backend, numThreads: threads });
  showModelInfo();
  data = await loadData(model.manifest);
  drawChart();
  if (!data) {
    setStatus(`model loaded on ${model.backend}; this export embeds no demo data set — use ` +
      'edgetrain.js from your own page');
    document.querySelectorAll('section.card').forEach((s, i) => { if (i !== 1) s.hidden = true; });
    return;
  }
  setupPad();
  await updateGallery();
  const ev = await evaluate();
  history.acc.push({ step: 0, value: ev.accuracy });
  drawChart();
  setStatus(`model loaded on ${model.backend}; held-out accuracy ${(100 * ev.accuracy).toFixed(1)}%`);
  $('train').onclick = trainUI;
  $('stop').onclick = () => { stopRequested = true; };
  $('save').onclick = () => stateAction(() => model.save('demo'), 'saved in this browser (IndexedDB)');
  $('restore').onclick = () => stateAction(() => model.restore('demo'), 'restored from IndexedDB');
  $('download').onclick = () => stateAction(() => model.download('edgetrain-checkpoint.safetensors'),
    'checkpoint downloaded');
  $('reset').onclick = () => stateAction(() => model.reset(), 'back to the exported state');
  $('upload').onchange = async (e) => {
    const f = e.target.files[0];
    if (f) await stateAction(async () => model.loadCheckpoint(await f.arrayBuffer()), `loaded ${f.name}`);
    e.target.value = '';
  };
  setBusy(false);
  if (AUTORUN) {
    setBusy(true);
    history.acc.length = 0;
    setStatus(`autorun on ${model.backend}…`);
    const result = await autorun();
    setStatus(`autorun done on ${model.backend}: ${result.steps} steps in ` +
      `${result.seconds.toFixed(1)} s`);
    setBusy(false);
    window.edgetrainResult = result;
  }
}

main().catch((e) => {
  console.error(e);
  setStatus(`error: ${e.message}`, true);
  window.edgetrainResult = { ok: false, error: String(e && e.message ? e.message : e), stack: e && e.stack };
});
