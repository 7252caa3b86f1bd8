// The .d.ts files are valid TypeScript and describe the contract (test/types/contract.ts).

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
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
