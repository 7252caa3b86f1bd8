// The JSON Schema subset validator (on schemas of its own), and the manifest and metadata checks
// the core makes with the format's schema before it uses anything in an export.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';

import {
  FORMAT_SCHEMA, FormatError, MANIFEST_SCHEMA, SchemaError, compileSchema, formatVersion,
  validateManifest, validateMeta,
} from 'edgetrain/core';
import { FORMAT_SCHEMA_SOURCE } from '../src/schemas.js';
import { JS_ROOT, REPO, fixturesDir } from '../support/fixtures.js';

function problems(schema, cases, registry) {
  const check = compileSchema(schema, { registry });
  return cases.map((v) => check(v));
}

describe('validator', () => {
  test('type, enum, const', () => {
    assert.deepEqual(problems({ type: 'integer' }, [3, 3.5, '3', null]).map(Boolean),
      [false, true, true, true]);
    assert.deepEqual(problems({ type: ['string', 'null'] }, ['a', null, 1]).map(Boolean), [false, false, true]);
    assert.deepEqual(problems({ type: 'number' }, [3, 3.5, true]).map(Boolean), [false, false, true]);
    assert.deepEqual(problems({ enum: ['a', 1, [1, 2]] }, ['a', 1, [1, 2], [2, 1], 'b']).map(Boolean),
      [false, false, false, true, true]);
    assert.match(problems({ const: 2 }, [3])[0], /value must be 2, not 3/);
  });

  test('objects: properties, required, additionalProperties, propertyNames, sizes', () => {
    const schema = { type: 'object', required: ['a'], additionalProperties: false,
      properties: { a: { type: 'string' }, b: { type: 'integer' } } };
    const [ok, missing, extra, wrong] = problems(schema, [{ a: 'x', b: 1 }, { b: 1 }, { a: 'x', c: 1 },
      { a: 'x', b: 'y' }]);
    assert.equal(ok, null);
    assert.match(missing, /lacks "a"/);
    assert.match(extra, /unknown key "c"/);
    assert.match(wrong, /^b must be integer, not string$/);
    const map = { type: 'object', propertyNames: { pattern: '^[a-z]+$' }, maxProperties: 2,
      additionalProperties: { type: 'number' } };
    assert.deepEqual(problems(map, [{ a: 1, b: 2 }, { A: 1 }, { a: 1, b: 2, c: 3 }, { a: 'x' }])
      .map(Boolean), [false, true, true, true]);
    assert.match(problems({ minProperties: 1 }, [{}])[0], /fewer than 1/);
  });

  test('arrays: items, prefixItems, minItems, maxItems, uniqueItems', () => {
    const s = { type: 'array', items: { type: 'integer', minimum: 0 }, minItems: 1, maxItems: 3,
      uniqueItems: true };
    const [ok, empty, long, neg, dup] = problems(s, [[1, 2], [], [1, 2, 3, 4], [1, -1], [2, 2]]);
    assert.equal(ok, null);
    assert.match(empty, /fewer than 1 items/);
    assert.match(long, /more than 3 items/);
    assert.match(neg, /^\[1\] is -1, it must be at least 0$/);
    assert.match(dup, /lists 2 twice/);
    assert.deepEqual(problems({ prefixItems: [{ type: 'string' }], items: false }, [['a'], ['a', 1], [1]])
      .map(Boolean), [false, true, true]);
  });

  test('strings and numbers: pattern (unanchored, unicode), lengths, bounds', () => {
    assert.deepEqual(problems({ pattern: 'b' }, ['abc', 'xyz', 5]).map(Boolean), [false, true, false]);
    assert.deepEqual(problems({ pattern: '^(?:[^\\p{C}\\p{Z}]| )+$' }, ['a b', 'a\u0000', 'a\u2028', '<x>'])
      .map(Boolean), [false, true, true, false]);
    assert.deepEqual(problems({ maxLength: 2, minLength: 1 }, ['ab', 'abc', '', '😀😀']).map(Boolean),
      [false, true, true, false]);
    assert.deepEqual(problems({ minimum: 1, exclusiveMaximum: 3 }, [1, 2.9, 3, 0]).map(Boolean),
      [false, false, true, true]);
    assert.deepEqual(problems({ exclusiveMinimum: 0, maximum: 1, multipleOf: 0.25 }, [0.5, 0, 0.3])
      .map(Boolean), [false, true, true]);
  });

  test('$ref to $defs (recursive) and to another document; anyOf, oneOf, allOf, not', () => {
    const tree = { $ref: '#/$defs/node', $defs: { node: { type: 'object', additionalProperties: false,
      properties: { v: { type: 'integer' }, kids: { type: 'array', items: { $ref: '#/$defs/node' } } } } } };
    const [ok, bad] = problems(tree, [{ v: 1, kids: [{ v: 2, kids: [{ v: 3 }] }] },
      { v: 1, kids: [{ kids: [{ v: 'x' }] }] }]);
    assert.equal(ok, null);
    assert.match(bad, /^kids\[0\]\.kids\[0\]\.v must be integer/);
    const other = { $defs: { id: { type: 'string', pattern: '^[a-z]+$' } } };
    assert.deepEqual(problems({ properties: { a: { $ref: 'other.json#/$defs/id' } } },
      [{ a: 'ok' }, { a: 'NO' }], { 'other.json': other }).map(Boolean), [false, true]);
    assert.deepEqual(problems({ anyOf: [{ type: 'null' }, { type: 'integer' }] }, [null, 1, 'x'])
      .map(Boolean), [false, false, true]);
    assert.deepEqual(problems({ oneOf: [{ type: 'integer' }, { type: 'number' }] }, [1.5, 1]).map(Boolean),
      [false, true]);
    assert.deepEqual(problems({ allOf: [{ minimum: 0 }, { maximum: 1 }] }, [0.5, 2]).map(Boolean),
      [false, true]);
    assert.deepEqual(problems({ not: { type: 'string' } }, [1, 'x']).map(Boolean), [false, true]);
  });

  test('a schema with a keyword it does not know, or a broken $ref, is refused up front', () => {
    assert.throws(() => compileSchema({ type: 'object', dependentRequired: {} }), SchemaError);
    assert.throws(() => compileSchema({ format: 'email' }), /unsupported JSON Schema keyword "format"/);
    assert.throws(() => compileSchema({ pattern: '(' }), /not a valid regular expression/);
    const check = compileSchema({ $ref: 'missing.json' });
    assert.throws(() => check(1), /unknown \$ref missing.json/);
    const check2 = compileSchema({ $ref: '#/$defs/nope' });
    assert.throws(() => check2(1), /points at nothing/);
  });
});

function manifestOf(model) {
  return JSON.parse(fs.readFileSync(path.join(fixturesDir(), model, 'site', 'edgetrain-web.json'), 'utf8'));
}

describe('manifest and metadata', () => {
  test('the schemas in src/schemas.js are their sources (format: Python\'s when it exists)', () => {
    execFileSync(process.execPath, [path.join(JS_ROOT, 'scripts', 'sync-schemas.mjs'), '--check']);
    const python = path.join(REPO, 'src', 'edgetrain', 'format', 'schema.json');
    const source = fs.existsSync(python) ? python : path.join(JS_ROOT, 'schema', 'format.schema.json');
    assert.deepEqual(FORMAT_SCHEMA, JSON.parse(fs.readFileSync(source, 'utf8')));
    assert.equal(FORMAT_SCHEMA_SOURCE, fs.existsSync(python) ? 'src/edgetrain/format/schema.json'
      : 'js/schema/format.schema.json');
    assert.deepEqual(MANIFEST_SCHEMA, JSON.parse(fs.readFileSync(
      path.join(JS_ROOT, 'schema', 'web-manifest.schema.json'), 'utf8')));
    assert.ok(Number.isInteger(formatVersion()) && formatVersion() >= 1);
  });

  test('real exports pass', () => {
    for (const model of ['mlp', 'cnn', 'v1']) validateManifest(manifestOf(model));
  });

  test('what the page would show is checked: markup in a name is refused, named', () => {
    const xss = '<img src=x onerror=alert(1)>';
    const edits = [
      [(m) => { m.meta.loss.name = xss; }, /manifest\.meta\.loss\.name .* does not match/],
      [(m) => { m.meta.optimizer.name = xss; }, /meta\.optimizer\.name/],
      [(m) => { m.meta.signatures[xss] = m.meta.signatures.eval; }, /a key of manifest.meta.signatures/],
      [(m) => { m.onnxruntime_web.version += xss; }, /onnxruntime_web\.version/],
      [(m) => { m.graphs.train.file = '../../etc/passwd'; }, /graphs\.train\.file/],
      [(m) => { m.state.file = 'ort/../../x'; }, /state\.file/],
      [(m) => { m.extra = 1; }, /unknown key "extra"/],
      [(m) => { m.meta.optimizer.lr = -1; }, /optimizer\.lr is -1/],
      [(m) => { delete m.state.tensors['edgetrain.step']; }, /state\.tensors are not/],
      [(m) => { m.graphs.train.updates['fc2.w'] = 'logits'; }, /graphs\.train lacks the output logits|updates differ/],
    ];
    for (const [edit, pattern] of edits) {
      const m = manifestOf('mlp');
      edit(m);
      assert.throws(() => validateManifest(m), (e) => e instanceof FormatError && pattern.test(e.message)
        && !e.message.includes('\n'), pattern.source);
    }
  });

  test('versions: a newer file asks for an upgrade, an old export for a re-export', () => {
    const m = manifestOf('mlp');
    m.meta.format_version = formatVersion() + 1;
    assert.throws(() => validateManifest(m), new RegExp(`format version ${formatVersion() + 1}; this ` +
      `driver reads version ${formatVersion()} and older — upgrade edgetrain`));
    const old = manifestOf('mlp');
    old.format_version = 1;
    assert.throws(() => validateManifest(old), /export it again/);
    const meta = manifestOf('mlp').meta;
    validateMeta(meta);
    meta.state.push(meta.trainable[0]);
    assert.throws(() => validateMeta(meta), /is both trainable and state/);
  });
});
