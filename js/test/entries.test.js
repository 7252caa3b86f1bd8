// One core, three entries: the package's exports map, the browser entry (run here with the npm
// onnxruntime-web over HTTP, the way a page fetches an export) and the React Native entry (run
// here with onnxruntime-node, which has onnxruntime-react-native's API, and a files adapter).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';

import * as ortNode from 'onnxruntime-node';

import * as main from 'edgetrain';
import * as core from 'edgetrain/core';
import * as nodeEntry from 'edgetrain/node';
import * as rn from 'edgetrain/react-native';
import * as web from 'edgetrain/web';
import { REPO, closeTo, modelFixtures, stepTensor } from '../support/fixtures.js';

const ORT_WEB = path.join(REPO, 'web', 'node_modules', 'onnxruntime-web', 'dist', 'ort.node.min.mjs');

test('the exports map: "edgetrain" is the Node.js entry under Node.js; every entry has the core', () => {
  assert.equal(main.load, nodeEntry.load);
  for (const entry of [main, nodeEntry, web, rn]) {
    for (const name of ['Model', 'openExport', 'mulberry32', 'encodeCheckpoint', 'EdgetrainError']) {
      assert.equal(entry[name], core[name], name);
    }
  }
  const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
  assert.equal(pkg.name, 'edgetrain');
  assert.equal(pkg.type, 'module');
  assert.deepEqual(Object.keys(pkg.exports), ['.', './node', './web', './react-native', './core',
    './package.json']);
  for (const [key, target] of Object.entries(pkg.exports)) {
    if (typeof target === 'string') continue;
    for (const file of Object.values(target)) {
      assert.ok(fs.existsSync(new URL(`../${file}`, import.meta.url)), `${key}: ${file}`);
    }
  }
  assert.equal(pkg.exports['.'].react_native, undefined);
  assert.equal(pkg.exports['.']['react-native'], './src/react-native.js');
  assert.equal(pkg.exports['.'].browser, './src/web.js');
});

function memoryStore() {
  const saved = new Map();
  return { describe: () => 'memory', save: async (k, b) => { saved.set(k, b.slice()); },
    load: async (k) => saved.get(k) || null };
}

async function trainAll(m, fx, ort) {
  const x = m.inputName('train', 'data');
  const y = m.inputName('train', 'label');
  const losses = [];
  for (let s = 0; s < fx.python.steps; s++) {
    const out = await m.run('train', { [x]: stepTensor(ort, fx.x, s), [y]: stepTensor(ort, fx.y, s) });
    losses.push(out.loss);
  }
  return losses;
}

test('browser entry: a relative URL without a page is a clear error, not "Invalid URL"', async () => {
  await assert.rejects(() => web.load('./site/'), /cannot resolve "\.\/site\/" without a page/);
});

test('browser entry with onnxruntime-web (wasm), served over HTTP: Python\'s losses', {
  skip: fs.existsSync(ORT_WEB) ? false : 'needs onnxruntime-web (npm ci --prefix web)',
}, async () => {
  const ort = await import(pathToFileURL(ORT_WEB).href);
  ort.env.wasm.numThreads = 1;
  const fx = modelFixtures('mlp');
  const site = path.join(fx.dir, 'site');
  const server = http.createServer((req, res) => {
    const name = decodeURIComponent(new URL(req.url, 'http://x').pathname).replace(/^\/site\//, '');
    const file = path.join(site, name);
    if (!file.startsWith(site) || !fs.existsSync(file)) { res.writeHead(404).end(); return; }
    res.writeHead(200).end(fs.readFileSync(file));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    const url = `http://127.0.0.1:${server.address().port}/site`;
    const m = await web.load(url, { ort, backend: 'wasm', store: memoryStore() });
    assert.equal(m.backend, 'wasm');
    assert.deepEqual(m.providers.train, ['wasm']);
    const losses = await trainAll(m, fx, ort);
    closeTo(losses, fx.python.losses, 1e-4);
    await m.save('k');
    await m.restore('k');
    assert.equal(await m.step(), fx.python.steps);
    await m.release();
  } finally {
    server.close();
  }
});

/** react-native-fs's API (the calls rnfsFiles makes) over Node's fs, base64 as RNFS moves it. */
const fakeRNFS = {
  exists: async (p) => fs.existsSync(p),
  stat: async (p) => { const st = fs.statSync(p); return { isFile: () => st.isFile() }; },
  readFile: async (p, enc) => { assert.equal(enc, 'base64'); return fs.readFileSync(p).toString('base64'); },
  writeFile: async (p, data, enc) => { assert.equal(enc, 'base64'); fs.writeFileSync(p, Buffer.from(data, 'base64')); },
  moveFile: async (a, b) => fs.renameSync(a, b),
  unlink: async (p) => fs.rmSync(p),
};

test('React Native entry (onnxruntime-node standing in for onnxruntime-react-native)', async () => {
  const fx = modelFixtures('cnn');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgetrain-rn-'));
  try {
    fs.cpSync(path.join(fx.dir, 'site'), path.join(dir, 'site'), { recursive: true });
    let created = [];
    const spy = { ...ortNode, InferenceSession: { create: (model, o) => {
      created.push(typeof model);
      return ortNode.InferenceSession.create(model, o);
    } } };
    await assert.rejects(() => rn.load(path.join(dir, 'site'), { ort: spy }), /pass \{ files \}/);
    const m = await rn.load(path.join(dir, 'site'), { ort: spy, files: rn.rnfsFiles(fakeRNFS) });
    // One session per graph, each by path: native code reads them.
    assert.deepEqual(created, Object.keys(m.graphs).map(() => 'string'));
    assert.ok(created.length >= 3);
    assert.deepEqual(m.providers.train, ['cpu']);
    const losses = await trainAll(m, fx, ortNode);
    closeTo(losses, fx.python.losses, 1e-5);
    await m.save('ck.safetensors');  // inside the export folder, atomically
    assert.ok(fs.existsSync(path.join(dir, 'site', 'ck.safetensors')));
    assert.deepEqual(fs.readdirSync(path.join(dir, 'site')).filter((n) => n.endsWith('.tmp')), []);
    await m.restore(path.join(fx.dir, 'python.safetensors'));  // an absolute path
    assert.equal(await m.step(), fx.python.restore_at);
    await m.restore('ck.safetensors');
    assert.equal(await m.step(), fx.python.steps);
    created = [];
    await assert.rejects(() => rn.load(path.join(dir, 'nowhere'), { ort: spy, files: rn.rnfsFiles(fakeRNFS) }),
      /no edgetrain-web.json in .*nowhere/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('base64 as React Native moves bytes: equal to Node\'s, strict on input', () => {
  for (const n of [0, 1, 2, 3, 4, 5, 255, 1000]) {
    const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 37 + n) & 255);
    const b64 = rn.toBase64(bytes);
    assert.equal(b64, Buffer.from(bytes).toString('base64'));
    assert.deepEqual(rn.fromBase64(b64), bytes);
  }
  assert.throws(() => rn.fromBase64('ab$d'), /invalid base64/);
  assert.throws(() => rn.fromBase64('abc'), /invalid base64/);
});

test('without WebCrypto or TextDecoder (React Native): the same digests and text', async () => {
  const msg = new TextEncoder().encode('edgetrain ✓ '.repeat(50));
  assert.deepEqual(core.sha256Fallback(msg), await core.sha256(msg));
  const key = new Uint8Array(80).fill(3);  // longer than a block: hashed first
  const saved = globalThis.crypto;
  const savedDecoder = globalThis.TextDecoder;
  const viaSubtle = await core.hmacSha256(key, msg);
  const ck = await core.encodeCheckpoint({ w: { dtype: 'float32', dims: [2], data: Float32Array.from([1, 2]) } },
    { key: new Uint8Array(16).fill(1) });
  try {
    Object.defineProperty(globalThis, 'crypto', { value: undefined, configurable: true });
    globalThis.TextDecoder = undefined;
    assert.deepEqual(await core.hmacSha256(key, msg), viaSubtle);
    assert.equal(core.utf8Decode(msg, 'text'), 'edgetrain ✓ '.repeat(50));
    assert.throws(() => core.utf8Decode(Uint8Array.from([0xc3, 0x28]), 'bad'), /not UTF-8/);
    assert.throws(() => core.utf8Decode(Uint8Array.from([0xed, 0xa0, 0x80]), 'bad'), /not UTF-8/);
    const { tensors } = await core.decodeCheckpoint(ck, { key: new Uint8Array(16).fill(1) });
    assert.deepEqual(Array.from(tensors.w.data), [1, 2]);
    await assert.rejects(() => core.decodeCheckpoint(ck, { key: new Uint8Array(16).fill(2) }), /fails its MAC/);
  } finally {
    Object.defineProperty(globalThis, 'crypto', { value: saved, configurable: true });
    globalThis.TextDecoder = savedDecoder;
  }
});
