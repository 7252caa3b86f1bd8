// The .d.ts files are valid TypeScript and describe the contract (test/types/contract.ts).

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url));

test('the types compile with the contract and refuse misuse (tsc --noEmit, strict)', {
  skip: fs.existsSync(tsc) ? false : 'needs typescript (npm ci in js/)',
}, () => {
  const project = fileURLToPath(new URL('./types/tsconfig.json', import.meta.url));
  const r = spawnSync(process.execPath, [tsc, '-p', project], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test('the React Native example parses (tsc --noCheck) and imports what the entry exports', {
  skip: fs.existsSync(tsc) ? false : 'needs typescript (npm ci in js/)',
}, async () => {
  const app = fileURLToPath(new URL('../examples/react-native/App.tsx', import.meta.url));
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'edgetrain-rn-'));
  try {
    const r = spawnSync(process.execPath, [tsc, '--noCheck', '--jsx', 'react-native', '--module',
      'esnext', '--target', 'es2022', '--outDir', out, app], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.ok(fs.existsSync(path.join(out, 'App.js')));
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
  const source = fs.readFileSync(app, 'utf8');
  const names = source.match(/import \{([^}]*)\} from 'edgetrain\/react-native'/)[1]
    .split(',').map((s) => s.trim().replace(/^type /, '')).filter((s) => s && s !== 'Model');
  const entry = await import('edgetrain/react-native');
  assert.deepEqual(names.filter((n) => !(n in entry)), []);
  assert.deepEqual(names.sort(), ['batchIndices', 'load', 'rnfsFiles']);
});
