// The benchmark's JavaScript peers (benchmarks/run.py --peers ort-node ort-web): a loaded
// export answers commands, one at a time, on the workload's batches. onnxruntime-node runs it in
// node (scripts/bench-node.mjs); onnxruntime-web in Chromium (scripts/bench.html + bench-page.mjs,
// copied into the export folder with this module and matrix-jobs.mjs, driven by
// web/serve-page.mjs). The Python side is benchmarks/peers/_js.py.
//
// The batches are the export's bench/ folder: batches.json ({batches: [{input: {dtype, shape,
// offset, bytes}}]}, the batch format of the conformance matrix's plans) and batches.bin.
//
//   {cmd: 'train', batches: [i, ...]} → {ok, losses, ms}: one `train` call per batch, in order;
//       ms is the calls' total wall time, measured here with performance.now()
//   {cmd: 'step'} → {ok, step}: the model's step counter

import { lossName, readBatches, trainSteps } from './matrix-jobs.mjs';

/** Where the batches are, relative to the export folder. */
export const BATCHES = { json: 'bench/batches.json', bin: 'bench/batches.bin' };

/** The batches as {input: {data, dims}}, from batches.json's text and batches.bin's bytes. */
export function benchBatches(json, bytes) {
  return readBatches(JSON.parse(json), bytes);
}

/** The command handler of the loaded model `m` on `batches`: async (cmd) → reply. */
export function commands(m, batches) {
  const loss = lossName(m);
  return async (cmd) => {
    try {
      if (cmd.cmd === 'train') {
        const bad = (cmd.batches || []).find((i) => !(Number.isInteger(i) && i >= 0
          && i < batches.length));
        if (!Array.isArray(cmd.batches) || bad !== undefined) {
          throw new Error(`train: batches must be indices below ${batches.length}`);
        }
        return { ok: true, ...await trainSteps(m, batches, cmd.batches, loss) };
      }
      if (cmd.cmd === 'step') return { ok: true, step: await m.step() };
      return { ok: false, error: `unknown command ${JSON.stringify(cmd.cmd)}` };
    } catch (e) {
      return { ok: false, error: String(e && e.message), stack: e && e.stack };
    }
  };
}
