// The onnxruntime-node column of the runtime conformance matrix (tests/test_runtimes.py):
// train an `edgetrain export-web` folder on the jobs of a plan (see matrix-jobs.mjs).
//
//   node scripts/matrix-node.mjs SITE RUN
//
// RUN holds plan.json and batches.bin (and the checkpoints the jobs restore, named in the plan);
// the results go to RUN/result.json: per job the losses, the step counter before and after, and
// the path of the checkpoint it saved (RUN/job-J.safetensors, written by the package's save()).

import fs from 'node:fs';
import path from 'node:path';

import * as ort from 'onnxruntime-node';

import { load } from 'edgetrain';
import { runPlan } from './matrix-jobs.mjs';

const [site, run] = process.argv.slice(2);
if (!site || !run) {
  console.error('usage: node scripts/matrix-node.mjs SITE RUN');
  process.exit(2);
}
const plan = JSON.parse(fs.readFileSync(path.join(run, 'plan.json'), 'utf8'));
const bytes = new Uint8Array(fs.readFileSync(path.join(run, 'batches.bin')));
const m = await load(site, { ort });
const t0 = performance.now();
const result = await runPlan(m, plan, bytes, {
  restore: (model, name) => model.restore(path.join(run, path.basename(name))),
  save: (model, j) => model.save(path.join(run, `job-${j}.safetensors`)),
});
result.providers = m.providers.train;
result.ms = performance.now() - t0;
await m.release();
fs.writeFileSync(path.join(run, 'result.json'), JSON.stringify(result));
