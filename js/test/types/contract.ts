// Type-checked by js/test/types.test.js (tsc --noEmit): the README's contract compiles against
// the package's .d.ts files with strict settings, and misuse does not.
import * as ort from 'onnxruntime-node';
import { load, InputError, type Model } from 'edgetrain';
import { load as loadWeb, download } from 'edgetrain/web';
import { load as loadRN, rnfsFiles } from 'edgetrain/react-native';

export async function contract(x: ort.Tensor, y: ort.Tensor): Promise<number> {
  const m: Model = await load('site/', { ort });
  const { loss } = await m.run('train', { x, y });
  await m.save('ck.safetensors');
  await m.restore('ck.safetensors');
  const logits = await m.infer(x);
  const steps: number = await m.step();
  const ck: Uint8Array = await m.checkpoint({ key: new Uint8Array(32) });
  await m.loadCheckpoint(ck);
  if (!(logits.dims.length && typeof loss === 'number')) throw new InputError('unreachable');
  return (await m.train(x, y, { lr: 0.01 })) + steps;
}

export async function browser(): Promise<void> {
  const m = await loadWeb('./', { backend: 'wasm', numThreads: 1 });
  await download(m, 'mine.safetensors');
}

export async function reactNative(RNFS: unknown, rt: typeof ort): Promise<number> {
  const m = await loadRN('/data/site', { ort: rt, files: rnfsFiles(RNFS), executionProviders: ['cpu'] });
  return m.step();
}

// @ts-expect-error: a signature's inputs are an object, not a list
export const wrong = (m: Model) => m.run('train', [1, 2]);
// @ts-expect-error: load in React Native needs { ort, files }
export const missing = () => loadRN('/data/site', {});
