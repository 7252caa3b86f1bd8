// The runtime conformance matrix's training jobs (tests/test_runtimes.py), shared by its two
// JavaScript columns: onnxruntime-node (scripts/matrix-node.mjs) and onnxruntime-web in Chromium
// (scripts/matrix.html + matrix-page.mjs, copied into the export folder with this module). The
// benchmark's JavaScript peers (scripts/bench-jobs.mjs) read their batches and train with it too.
//
// A plan (plan.json, written by tests/_js_drivers.py) names the batches, as arrays in one binary
// file (C order, each at a byte offset), and the jobs. Each job starts from the export's initial
// state, optionally restores a checkpoint, runs one `train` call per listed batch, and optionally
// saves a checkpoint. Every input of the train signature comes from the batch (float32 data,
// int64 labels, token ids, masks…) except the learning rate, which keeps the file's default.
//
//   plan = { batches: [{ name: { dtype, shape, offset, bytes } }],
//            jobs: [{ batches: [i, ...], restore: name | null, save: bool }] }

const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int64: BigInt64Array, int32: Int32Array,
  int8: Int8Array, uint8: Uint8Array, bool: Uint8Array,
};

/** The plan's batches as {input: {data, dims}}, the typed arrays copied out of `bytes`. */
export function readBatches(plan, bytes) {
  return plan.batches.map((batch) => Object.fromEntries(Object.entries(batch).map(([name, a]) => {
    const Array_ = ARRAYS[a.dtype];
    if (!Array_) throw new Error(`input ${name}: dtype ${a.dtype} is not handled`);
    if (a.offset + a.bytes > bytes.byteLength) throw new Error(`input ${name} lies past the data`);
    const copy = bytes.slice(a.offset, a.offset + a.bytes);  // aligned, and its own buffer
    const data = new Array_(copy.buffer, copy.byteOffset, a.bytes / Array_.BYTES_PER_ELEMENT);
    return [name, { data, dims: a.shape }];
  })));
}

/** The name of the train signature's loss output. */
export function lossName(m) {
  return m.signatures.train.outputs.find((o) => o.role === 'loss')?.name || 'loss';
}

/**
 * One `train` call per index into `batches`, one after the other: the losses, and the
 * milliseconds the calls took together (performance.now(), in this JavaScript context).
 */
export async function trainSteps(m, batches, indices, loss = lossName(m)) {
  const losses = [];
  const t0 = performance.now();
  for (const i of indices) {
    const out = await m.run('train', batches[i]);
    losses.push(out[loss]);
  }
  return { losses, ms: performance.now() - t0 };
}

/**
 * Run the plan's jobs on the loaded model `m`. `io.restore(m, name)` restores the checkpoint
 * the job names, `io.save(m, j)` saves the state after job `j` and returns what the result
 * should carry for it (a path, base64 bytes). Returns {jobs: [{losses, step_before, step,
 * checkpoint?}]}.
 */
export async function runPlan(m, plan, bytes, io) {
  const batches = readBatches(plan, bytes);
  const loss = lossName(m);
  const jobs = [];
  for (const [j, job] of plan.jobs.entries()) {
    await m.reset();
    if (job.restore) await io.restore(m, job.restore);
    const result = { step_before: await m.step() };
    result.losses = (await trainSteps(m, batches, job.batches, loss)).losses;
    result.step = await m.step();
    if (job.save) result.checkpoint = await io.save(m, j);
    jobs.push(result);
  }
  return { jobs };
}
