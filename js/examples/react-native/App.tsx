// Train an edgetrain model on the phone: the same driver core as in Node.js and the browser,
// with onnxruntime-react-native (iOS, Android) and react-native-fs for files.
//
// The app ships a folder written by `edgetrain export-web model.onnx site --no-webgpu`
// (the ort/ folder is not needed) as assets: on Android under android/app/src/main/assets/site/,
// on iOS as a folder reference named "site" in the app bundle. The first start copies it to the
// app's documents folder, where onnxruntime reads the graphs (and frozen.bin next to them) and
// where checkpoints are saved. If the export embeds the digits demo data (digits.bin), the
// screen trains on it; an app would feed the user's own examples the same way.

import React, { useCallback, useEffect, useRef, useState } from 'react';
import { Button, Platform, SafeAreaView, ScrollView, StyleSheet, Text, View } from 'react-native';
import RNFS from 'react-native-fs';
import * as ort from 'onnxruntime-react-native';
import { batchIndices, load, rnfsFiles, type Model } from 'edgetrain/react-native';

const SITE = `${RNFS.DocumentDirectoryPath}/site`;
const FILES = ['edgetrain-web.json', 'state.safetensors', 'frozen.bin', 'infer.onnx',
  'train.onnx', 'eval.onnx', 'digits.bin'];
const CHECKPOINT = 'mine.safetensors';

/** Copy the bundled export into the documents folder once (assets are not plain files). */
async function installExport(): Promise<void> {
  if (await RNFS.exists(`${SITE}/edgetrain-web.json`)) return;
  await RNFS.mkdir(SITE);
  for (const name of FILES) {
    const target = `${SITE}/${name}`;
    if (Platform.OS === 'android') {
      if (await RNFS.existsAssets(`site/${name}`)) await RNFS.copyFileAssets(`site/${name}`, target);
    } else if (await RNFS.exists(`${RNFS.MainBundlePath}/site/${name}`)) {
      await RNFS.copyFile(`${RNFS.MainBundlePath}/site/${name}`, target);
    }
  }
}

interface Digits { x: Float32Array; y: BigInt64Array; n: number; train: number; shape: number[] }

/** The demo data of the export (digits.bin), scaled as the page scales it. */
async function readDigits(model: Model): Promise<Digits | null> {
  const info = model.manifest.dataset as null | {
    file: string; count: number; train: number; features: number; scale: number;
    x_offset: number; y_offset: number; sample_shape: number[];
  };
  if (!info) return null;
  const raw = await rnfsFiles(RNFS).readFile(`${SITE}/${info.file}`);
  if (!raw) return null;
  const x = Float32Array.from(raw.subarray(info.x_offset, info.x_offset + info.count * info.features),
    (v) => v * info.scale);
  const y = BigInt64Array.from(raw.subarray(info.y_offset, info.y_offset + info.count), (v) => BigInt(v));
  return { x, y, n: info.count, train: info.train, shape: info.sample_shape };
}

function batch(d: Digits, rows: ArrayLike<number>) {
  const f = d.x.length / d.n;
  const x = new Float32Array(rows.length * f);
  const y = new BigInt64Array(rows.length);
  Array.from(rows).forEach((r, i) => { x.set(d.x.subarray(r * f, (r + 1) * f), i * f); y[i] = d.y[r]; });
  return {
    x: new ort.Tensor('float32', x, [rows.length, ...d.shape]),
    y: new ort.Tensor('int64', y, [rows.length]),
  };
}

export default function App(): React.JSX.Element {
  const model = useRef<Model | null>(null);
  const data = useRef<Digits | null>(null);
  const [log, setLog] = useState<string[]>([]);
  const [busy, setBusy] = useState(true);
  const say = (line: string) => setLog((l) => [...l.slice(-200), line]);

  useEffect(() => {
    (async () => {
      try {
        await installExport();
        model.current = await load(SITE, { ort, files: rnfsFiles(RNFS), executionProviders: ['cpu'] });
        data.current = await readDigits(model.current);
        say(`loaded: ${Object.keys(model.current.signatures).join(', ')}; step ${await model.current.step()}`);
        if (!data.current) say('this export embeds no demo data: feed your own examples to train()');
      } catch (e) {
        say(`error: ${(e as Error).message}`);
      } finally {
        setBusy(false);
      }
    })();
    return () => { model.current?.release(); };
  }, []);

  const train = useCallback(async () => {
    const m = model.current;
    const d = data.current;
    if (!m || !d) return;
    setBusy(true);
    try {
      const start = await m.step();
      for (const rows of batchIndices(start + 1, 20, 32, d.train)) {
        const { x, y } = batch(d, rows);
        const { loss } = await m.run('train', { [m.inputName('train', 'data')]: x,
          [m.inputName('train', 'label')]: y });
        say(`step ${await m.step()}: loss ${(loss as number).toFixed(4)}`);
      }
      const test = Array.from({ length: d.n - d.train }, (_, i) => d.train + i);
      const { x, y } = batch(d, test);
      const ev = await m.run('eval', { [m.inputName('eval', 'data')]: x, [m.inputName('eval', 'label')]: y });
      say(`held-out accuracy ${(100 * (ev.accuracy as number)).toFixed(1)}%`);
    } catch (e) {
      say(`error: ${(e as Error).message}`);
    } finally {
      setBusy(false);
    }
  }, []);

  const save = useCallback(async () => {
    try {
      await model.current?.save(CHECKPOINT);  // ${SITE}/mine.safetensors, written atomically
      say(`saved ${CHECKPOINT}`);
    } catch (e) {
      say(`error: ${(e as Error).message}`);
    }
  }, []);

  const restore = useCallback(async () => {
    try {
      await model.current?.restore(CHECKPOINT);  // verified: checksum, model, values
      say(`restored ${CHECKPOINT}: step ${await model.current?.step()}`);
    } catch (e) {
      say(`error: ${(e as Error).message}`);
    }
  }, []);

  return (
    <SafeAreaView style={styles.screen}>
      <Text style={styles.title}>edgetrain on the device</Text>
      <View style={styles.buttons}>
        <Button title="Train 20 steps" onPress={train} disabled={busy} />
        <Button title="Save" onPress={save} disabled={busy} />
        <Button title="Restore" onPress={restore} disabled={busy} />
      </View>
      <ScrollView style={styles.log}>
        {log.map((line, i) => <Text key={i} style={styles.line}>{line}</Text>)}
      </ScrollView>
    </SafeAreaView>
  );
}

const styles = StyleSheet.create({
  screen: { flex: 1, padding: 16 },
  title: { fontSize: 20, fontWeight: '600', marginBottom: 12 },
  buttons: { flexDirection: 'row', justifyContent: 'space-between', marginBottom: 12 },
  log: { flex: 1 },
  line: { fontFamily: Platform.select({ ios: 'Menlo', default: 'monospace' }), fontSize: 12 },
});
