// The format facts the core keeps: the commit rule, checkpoints (checksum versions 1 and 2,
// architecture, MAC, values, hostile headers), version-1 files (no roles), with onnxruntime-node.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { before, describe, test } from 'node:test';

import * as ort from 'onnxruntime-node';

import {
  CheckpointError, EdgetrainError, InputError, NonFiniteError, checksum, decodeCheckpoint,
  encodeCheckpoint, load,
} from 'edgetrain/node';
import { closeTo, fixturesDir, modelFixtures, stepTensor, tensorOf } from '../support/fixtures.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'edgetrain-format-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

/** safetensors bytes with exactly this header (the tool a forger has). */
function safetensors(tensors, metadata, headerText) {
  const names = Object.keys(tensors).sort();
  const header = { __metadata__: metadata };
  let off = 0;
  for (const n of names) {
    const len = tensors[n].data.byteLength;
    header[n] = { dtype: { float32: 'F32', int64: 'I64' }[tensors[n].dtype], shape: tensors[n].dims,
      data_offsets: [off, off + len] };
    off += len;
  }
  const json = new TextEncoder().encode(headerText ?? JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const n of names) {
    out.set(new Uint8Array(tensors[n].data.buffer, tensors[n].data.byteOffset, tensors[n].data.byteLength), at);
    at += tensors[n].data.byteLength;
  }
  return out;
}

/** A forged checkpoint with a valid checksum: the model's architecture, chosen tensors. */
async function forge(m, edit, extraMeta = {}) {
  const tensors = await m.getState();
  edit(tensors);
  return encodeCheckpoint(tensors, { extra: { architecture: m.architecture, ...extraMeta } });
}

describe('mlp', () => {
  let m;
  let fx;
  let probe;
  let x;
  let y;
  const outputs = async () => Array.from((await m.infer(probe)).data);

  before(async () => {
    fx = modelFixtures('mlp');
    m = await load(path.join(fx.dir, 'site'), { ort });
    probe = tensorOf(ort, fx.probe);
    x = stepTensor(ort, fx.x, 0);
    y = stepTensor(ort, fx.y, 0);
    await m.train(x, y);
  });

  /** `fn` must throw ErrorClass matching `pattern`, and leave step and outputs as they were. */
  async function refusedUnchanged(fn, ErrorClass, pattern) {
    const step = await m.step();
    const out = await outputs();
    await assert.rejects(fn, (e) => e instanceof ErrorClass && pattern.test(e.message)
      && !e.message.includes('\n'));
    assert.equal(await m.step(), step);
    assert.deepEqual(await outputs(), out);
  }

  test('a step whose loss overflows is not committed (NonFiniteError)', async () => {
    const huge = new ort.Tensor('float32', new Float32Array(x.data.length).fill(3e38), x.dims);
    await refusedUnchanged(() => m.train(huge, y), NonFiniteError, /loss is (NaN|Infinity)/);
  });

  test('a bad learning rate or label is the input at fault (InputError), nothing changes', async () => {
    await refusedUnchanged(() => m.train(x, y, { lr: NaN }), InputError, /learning rate 'lr' must be finite and ≥ 0, got NaN/);
    await refusedUnchanged(() => m.train(x, y, { lr: -1 }), InputError, /must be finite and ≥ 0, got -1/);
    const bad = new ort.Tensor('int64', y.data.map((v, i) => (i ? v : 10n)), y.dims);
    await refusedUnchanged(() => m.train(x, bad), InputError, /labels in 'y' must lie in \[0, 10\); got min \d+, max 10/);
  });

  test('a checkpoint with a flipped byte fails its checksum', async () => {
    const ck = await m.checkpoint();
    ck[ck.length - 3] ^= 1;
    await refusedUnchanged(() => m.loadCheckpoint(ck), CheckpointError, /fails its checksum/);
  });

  test('forged values with a valid checksum are refused', async () => {
    const cases = [
      [(t) => { t['fc2.w.exp_avg_sq'].data[0] = -1; }, /fc2.w.exp_avg_sq holds negative/],
      [(t) => { t['fc3.b'].data[1] = NaN; }, /fc3.b contains NaN/],
      [(t) => { t['edgetrain.step'].data[0] = -5n; }, /step count is -5/],
    ];
    for (const [edit, pattern] of cases) {
      const ck = await forge(m, edit);
      await refusedUnchanged(() => m.loadCheckpoint(ck), CheckpointError, pattern);
    }
  });

  test('another architecture or another model is refused', async () => {
    const arch = await encodeCheckpoint(await m.getState(), { extra: { architecture: 'ab'.repeat(32) } });
    await refusedUnchanged(() => m.loadCheckpoint(arch), CheckpointError, /architecture/);
    const cnn = fs.readFileSync(path.join(fixturesDir(), 'cnn', 'python.safetensors'));
    await refusedUnchanged(() => m.loadCheckpoint(cnn), CheckpointError,
      /belongs to another model: missing tensors/);
  });

  test('MAC: a key proves the checkpoint; the wrong key, or none in the file, is refused', async () => {
    const key = new Uint8Array(32).fill(7);
    const other = new Uint8Array(32).fill(8);
    const file = path.join(tmp, 'mac.safetensors');
    await m.save(file, { key });
    await m.restore(file, { key });
    await m.restore(file);  // integrity only without a key
    await m.run('restore', { checkpoint_path: file, key });
    await refusedUnchanged(() => m.restore(file, { key: other }), CheckpointError, /fails its MAC/);
    await m.save(path.join(tmp, 'plain.safetensors'));
    await refusedUnchanged(() => m.restore(path.join(tmp, 'plain.safetensors'), { key }),
      CheckpointError, /carries no MAC/);
    await assert.rejects(() => m.save(file, { key: new Uint8Array(8) }), /at least 16/);
    await assert.rejects(() => m.save(file, { key: 'password' }), /must be bytes/);
  });

  test('hostile headers: duplicate keys, deep nesting, newer versions, bad offsets', async () => {
    const tensors = await m.getState();
    const meta = { kind: 'edgetrain-checkpoint', format_version: '1', checksum_version: '2' };
    meta.checksum = await checksum(tensors, meta);
    const good = safetensors(tensors, meta);
    await m.loadCheckpoint(good);  // the forger's writer makes valid files
    const text = new TextDecoder().decode(good.subarray(8, 8 + Number(new DataView(good.buffer).getBigUint64(0, true))));
    const dup = text.replace('{"__metadata__":{', '{"__metadata__":{"kind":"x",');
    await refusedUnchanged(() => m.loadCheckpoint(safetensors(tensors, meta, dup)), CheckpointError,
      /has the key "kind" twice/);
    const deep = `${'['.repeat(40)}${']'.repeat(40)}`;
    await refusedUnchanged(() => m.loadCheckpoint(safetensors(tensors, meta,
      text.replace('"__metadata__"', `"deep":${deep},"__metadata__"`))), CheckpointError, /nests deeper/);
    await refusedUnchanged(() => m.loadCheckpoint(safetensors(tensors, { ...meta, format_version: '99' })),
      CheckpointError, /format version 99; this driver reads version \d+ and older/);
    await refusedUnchanged(() => m.loadCheckpoint(safetensors(tensors, { ...meta, checksum_version: '3' })),
      CheckpointError, /checksum version 3/);
    await refusedUnchanged(() => m.loadCheckpoint(safetensors(tensors, { ...meta, format_version: '+1' })),
      CheckpointError, /invalid format_version/);
    const overlap = text.replace(/"data_offsets":\[0,/, '"data_offsets":[4,');
    await refusedUnchanged(() => m.loadCheckpoint(safetensors(tensors, meta, overlap)), CheckpointError,
      /corrupt/);
    await refusedUnchanged(() => m.loadCheckpoint(good.subarray(0, 100)), CheckpointError,
      /corrupt or truncated/);
  });

  test('restore reads only regular files and never blocks on a FIFO', async () => {
    const fifo = path.join(tmp, 'fifo.safetensors');
    execFileSync('mkfifo', [fifo]);
    await refusedUnchanged(() => m.restore(fifo), CheckpointError, /not a regular file/);
    await refusedUnchanged(() => m.restore(tmp), CheckpointError, /not a regular file/);
    await refusedUnchanged(() => m.restore(path.join(tmp, 'missing.safetensors')), CheckpointError,
      /no checkpoint/);
  });

  test('save is atomic: a failed write leaves the old checkpoint', async () => {
    const file = path.join(tmp, 'atomic.safetensors');
    await m.save(file);
    const old = fs.readFileSync(file);
    await assert.rejects(() => m.save(path.join(tmp, 'no-such-folder', 'x.safetensors')), CheckpointError);
    assert.deepEqual(fs.readFileSync(file), old);
    assert.deepEqual(fs.readdirSync(tmp).filter((n) => n.endsWith('.tmp')), []);
  });

  test('inputs are checked like Python checks them', async () => {
    const name = m.inputName('train', 'data');
    await assert.rejects(() => m.run('train', { [name]: x }), (e) => e instanceof InputError
      && /missing input y/.test(e.message));
    await assert.rejects(() => m.run('train', { [name]: x, y, bogus: 1 }), /unknown input\(s\) bogus/);
    await assert.rejects(() => m.run('nope', {}), /unknown signature nope/);
    const half = new ort.Tensor('int64', y.data.slice(0, 4), [4]);
    await assert.rejects(() => m.run('train', { [name]: x, y: half }), /dim 0 is 4 but pixels has 16 for N/);
    await assert.rejects(() => m.run('train', { [name]: new ort.Tensor('float32', new Float32Array(16 * 63), [16, 63]), y }),
      /expected \[N,64\]/);
    await assert.rejects(() => m.run('train', { [name]: new ort.Tensor('int32', new Int32Array(16 * 64), [16, 64]), y }),
      /is int32, expected float32/);
  });
});

test('commit rule: a counter that does not go up by exactly one keeps the old state', async () => {
  const fx = modelFixtures('mlp');
  let delta = 1n;
  // onnxruntime-node as it is, but the train graph's new step count moved by `delta`.
  const skewed = {
    ...ort,
    InferenceSession: {
      async create(...args) {
        const s = await ort.InferenceSession.create(...args);
        return { release: () => s.release(), run: async (feeds) => {
          const r = await s.run(feeds);
          if (r['edgetrain.step.new']) {
            const old = feeds['edgetrain.step'].data[0];
            r['edgetrain.step.new'] = new ort.Tensor('int64', BigInt64Array.from([old + delta]), []);
          }
          return r;
        } };
      },
    },
  };
  const m = await load(path.join(fx.dir, 'site'), { ort: skewed });
  const x = stepTensor(ort, fx.x, 0);
  const y = stepTensor(ort, fx.y, 0);
  const probe = tensorOf(ort, fx.probe);
  await m.train(x, y);
  const out = Array.from((await m.infer(probe)).data);
  for (delta of [2n, 0n, -1n]) {
    await assert.rejects(() => m.train(x, y), NonFiniteError);
    assert.equal(await m.step(), 1);
    assert.deepEqual(Array.from((await m.infer(probe)).data), out);
  }
  delta = 1n;
  await m.train(x, y);
  assert.equal(await m.step(), 2);
  assert.notDeepEqual(Array.from((await m.infer(probe)).data), out);
});

test('train_steps: K steps in one call equal Python\'s K losses; the commit rule counts K', async () => {
  const fx = modelFixtures('mlp');
  const K = 5;
  let skew = 0n;
  const skewed = {  // onnxruntime-node as it is, but train_steps' new count moved by `skew`
    ...ort,
    InferenceSession: {
      async create(...args) {
        const s = await ort.InferenceSession.create(...args);
        return { release: () => s.release(), run: async (feeds) => {
          const r = await s.run(feeds);
          const out = Object.keys(r).find((k) => k.startsWith('edgetrain.step') && k !== 'edgetrain.step.new');
          if (out && skew) r[out] = new ort.Tensor('int64', BigInt64Array.from([r[out].data[0] + skew]), []);
          return r;
        } };
      },
    },
  };
  const m = await load(path.join(fx.dir, 'site'), { ort: skewed });
  const sig = m.signatures.train_steps;
  assert.ok(sig && sig.inputs.every((s) => s.shape[0] === 'steps'), 'the export has train_steps');
  const per = (a) => a.shape.slice(1).reduce((p, d) => p * d, 1);
  const stacked = (a) => new ort.Tensor(a.dtype, a.data.slice(0, K * per(a)), [K, ...a.shape.slice(1)]);
  const rate = m.signatures.train.inputs.find((s) => s.role === 'lr').default;
  const inputs = { [m.inputName('train_steps', 'data')]: stacked(fx.x),
    [m.inputName('train_steps', 'label')]: stacked(fx.y),
    [m.inputName('train_steps', 'lr')]: new ort.Tensor('float32', new Float32Array(K).fill(rate), [K]) };
  const probe = tensorOf(ort, fx.probe);
  const before = Array.from((await m.infer(probe)).data);
  for (skew of [-1n, 1n]) {  // K-1 or K+1 steps counted: nothing is kept
    await assert.rejects(() => m.run('train_steps', inputs), NonFiniteError);
    assert.equal(await m.step(), 0);
    assert.deepEqual(Array.from((await m.infer(probe)).data), before);
  }
  const bad = { ...inputs, [m.inputName('train_steps', 'lr')]: new ort.Tensor('float32',
    Float32Array.from([rate, NaN, rate, rate, rate]), [K]) };
  await assert.rejects(() => m.run('train_steps', bad), InputError);
  skew = 0n;
  const out = await m.run('train_steps', inputs);
  const loss = sig.outputs.find((o) => o.role === 'loss').name;
  closeTo(Array.from(out[loss].data, Number), fx.python.losses.slice(0, K), 1e-5);
  assert.equal(await m.step(), K);
});

test('a version-1 file: label and lr by name, a checksum-version-1 checkpoint', async () => {
  const dir = path.join(fixturesDir(), 'v1');
  const want = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8'));
  const m = await load(path.join(dir, 'site'), { ort });
  assert.equal(m.inputName('train', 'label'), 'y');
  assert.equal(m.inputName('train', 'lr'), 'lr');
  assert.equal(m.inputName('train', 'data'), 'x');
  const raw = fs.readFileSync(path.join(dir, 'checkpoint.safetensors'));
  const { metadata } = await decodeCheckpoint(raw);
  assert.equal(metadata.checksum_version, undefined);  // the legacy digest
  await m.restore(path.join(dir, 'checkpoint.safetensors'));
  assert.equal(await m.step(), 3);
  const x = new ort.Tensor('float32', Float32Array.from(want.x.values), want.x.shape);
  const y = new ort.Tensor('int64', BigInt64Array.from(want.y.values.map(BigInt)), want.y.shape);
  closeTo(Array.from((await m.infer(x)).data), want.logits.values, 1e-5);
  closeTo([await m.train(x, y)], want.next_loss.values, 1e-5);
  // A step count that disagrees with the file (a foreign checkpoint's) changes nothing.
  const tampered = Uint8Array.from(raw);
  tampered[tampered.length - 1] ^= 0x40;
  await assert.rejects(() => m.loadCheckpoint(tampered), /fails its checksum/);
  assert.equal(await m.step(), 4);
});

test('errors are EdgetrainErrors, one line each', async () => {
  await assert.rejects(() => load(path.join(tmp, 'nowhere'), { ort }),
    (e) => e instanceof EdgetrainError && /no edgetrain-web.json in .*nowhere/.test(e.message));
  await assert.rejects(() => load(path.join(fixturesDir(), 'mlp', 'site'), { ort: {} }),
    /pass an onnxruntime module/);
});
