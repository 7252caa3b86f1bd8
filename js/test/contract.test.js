// The contract, against onnxruntime-node from npm and Python's own results (tests/js_fixtures.py):
//
//   import * as ort from 'onnxruntime-node';
//   import { load } from 'edgetrain';
//   const m = await load('site/', { ort });
//   const { loss } = await m.run('train', { x, y });   // loss is a number
//   await m.save('ck.safetensors'); await m.restore('ck.safetensors');
//
// Per model: 50 steps with losses equal to Python's to 1e-5; Python's checkpoint restores here
// and training goes on exactly as in Python; this driver's checkpoint restores here (and, in
// tests/test_js.py, in Python).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';

import * as ort from 'onnxruntime-node';

import { load } from 'edgetrain';
import { closeTo, modelFixtures, outDir, stepTensor, tensorOf } from '../support/fixtures.js';

const TOL = 1e-5;

async function inTempDir(fn) {
  const cwd = process.cwd();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgetrain-js-'));
  try {
    process.chdir(dir);
    return await fn(dir);
  } finally {
    process.chdir(cwd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

for (const model of ['mlp', 'cnn']) {
  test(`${model}: 50 steps equal Python's losses; checkpoints cross-restore`, async () => {
    const fx = modelFixtures(model);
    const { python } = fx;
    const out = outDir(model);
    await inTempDir(async (dir) => {
      fs.cpSync(path.join(fx.dir, 'site'), path.join(dir, 'site'), { recursive: true });
      const m = await load('site/', { ort });  // a relative path, as in the contract
      assert.deepEqual(Object.values(m.providers)[0], ['cpu']);
      const x = m.inputName('train', 'data');
      const y = m.inputName('train', 'label');
      assert.equal(x, python.data);
      assert.equal(y, python.label);
      const probe = tensorOf(ort, fx.probe);
      closeTo(Array.from((await m.infer(probe)).data), python.probe_before, TOL);

      const losses = [];
      for (let s = 0; s < python.steps; s++) {
        if (s === python.restore_at) await m.save('at-restore.safetensors');
        const { loss } = await m.run('train', { [x]: stepTensor(ort, fx.x, s), [y]: stepTensor(ort, fx.y, s) });
        assert.equal(typeof loss, 'number');
        losses.push(loss);
      }
      const worst = closeTo(losses, python.losses, TOL);
      assert.equal(await m.step(), python.steps);
      const after = Array.from((await m.infer(probe)).data);
      closeTo(after, python.probe_after, TOL);
      await m.save('ck.safetensors');

      // This driver's checkpoint restores here (a file: URL works as well as a path) ...
      await m.restore('at-restore.safetensors');
      assert.equal(await m.step(), python.restore_at);
      await m.restore(pathToFileURL(path.join(dir, 'ck.safetensors')));
      assert.deepEqual(Array.from((await m.infer(probe)).data), after);

      // ... and Python's checkpoint too: training goes on exactly as it did in Python.
      const fresh = await load(pathToFileURL(path.join(dir, 'site')), { ort });
      await fresh.restore(path.join(fx.dir, 'python.safetensors'));
      assert.equal(await fresh.step(), python.restore_at);
      const resumed = [];
      for (let s = python.restore_at; s < python.steps; s++) {
        resumed.push(await fresh.train(stepTensor(ort, fx.x, s), stepTensor(ort, fx.y, s)));
      }
      closeTo(resumed, python.losses.slice(python.restore_at), TOL);
      closeTo(Array.from((await fresh.infer(probe)).data), python.probe_after, TOL);

      if (out) {
        fs.copyFileSync('ck.safetensors', path.join(out, 'node.safetensors'));
        fs.writeFileSync(path.join(out, 'node.json'), JSON.stringify({ losses, resumed,
          probe_after: after, worst_relative_gap: worst }));
      }
      await m.release();
      await fresh.release();
    });
  });
}
