// A validator for the subset of JSON Schema (2020-12) that edgetrain's schemas use.
//
//   const check = compileSchema(schema, { registry: { 'format.schema.json': other } });
//   const problem = check(value);   // null, or the first problem: "meta.loss.name: ..."
//
// Supported keywords: type, enum, const, properties, required, additionalProperties,
// patternProperties, propertyNames, minProperties, maxProperties, items, prefixItems, minItems,
// maxItems, uniqueItems, pattern, minLength, maxLength, minimum, maximum, exclusiveMinimum,
// exclusiveMaximum, multipleOf, $ref (to "#/$defs/..." in the same document or to a document
// in the registry), $defs, anyOf, oneOf, allOf, not. Annotations ($schema, $id, $comment,
// title, description, default, examples, deprecated, readOnly, writeOnly) are ignored. Any
// other keyword is refused when the schema is compiled, so nothing is ever silently unchecked.
// Patterns are ECMAScript regular expressions with the u flag, unanchored as the standard says.

export class SchemaError extends Error {
  constructor(message) { super(message); this.name = 'SchemaError'; }
}

const ANNOTATIONS = new Set(['$schema', '$id', '$comment', 'title', 'description', 'default',
  'examples', 'deprecated', 'readOnly', 'writeOnly', '$defs', 'definitions']);
const KEYWORDS = new Set(['type', 'enum', 'const', 'properties', 'required',
  'additionalProperties', 'patternProperties', 'propertyNames', 'minProperties', 'maxProperties',
  'items', 'prefixItems', 'minItems', 'maxItems', 'uniqueItems', 'pattern', 'minLength',
  'maxLength', 'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'multipleOf', '$ref',
  'anyOf', 'oneOf', 'allOf', 'not']);
const MAX_DEPTH = 64;  // of the value; the metadata nests about 8 deep

/** JSON Schema's type of a JSON value ("integer" values are also "number"). */
function typeOf(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;  // boolean, string, object (and undefined, function: never JSON)
}

function hasType(v, t) {
  const actual = typeOf(v);
  return actual === t || (t === 'number' && actual === 'integer');
}

function equal(a, b) {
  if (a === b) return true;
  if (typeOf(a) !== typeOf(b) || typeof a !== 'object' || a === null) return false;
  if (Array.isArray(a)) return a.length === b.length && a.every((x, i) => equal(x, b[i]));
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => hasOwn(b, k) && equal(a[k], b[k]));
}

function hasOwn(o, k) { return Object.prototype.hasOwnProperty.call(o, k); }

function shown(v) {
  const s = typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function join(path, key) {
  return typeof key === 'number' ? `${path}[${key}]` : path ? `${path}.${key}` : key;
}

function pointer(doc, ref, where) {  // "#/$defs/name" -> the sub-schema
  let node = doc;
  for (const raw of ref.replace(/^#\/?/, '').split('/').filter((p) => p !== '')) {
    const part = decodeURIComponent(raw).replace(/~1/g, '/').replace(/~0/g, '~');
    if (node === null || typeof node !== 'object' || !hasOwn(node, part)) {
      throw new SchemaError(`${where}: $ref ${ref} points at nothing`);
    }
    node = node[part];
  }
  return node;
}

/**
 * Compile `schema` into a function value -> null | "path: problem". `registry` maps document
 * names (the part of a $ref before "#") to schemas; `name`, if given, starts every path.
 */
export function compileSchema(schema, { registry = {}, name } = {}) {
  const rootPath = name || '';  // a named root prefixes every path: "manifest.meta.loss.name"
  name = name || 'value';
  const compiled = new Map();  // schema object -> check function (handles recursive $refs)

  function compile(node, doc, where) {
    if (node === true) return () => null;
    if (node === false) return (v, path) => `${path || name}: no value is allowed here`;
    if (node === null || typeof node !== 'object' || Array.isArray(node)) {
      throw new SchemaError(`${where}: a schema must be an object or a boolean`);
    }
    if (compiled.has(node)) return compiled.get(node);
    let fn = null;
    const proxy = (v, path, depth) => fn(v, path, depth);
    compiled.set(node, proxy);
    for (const k of Object.keys(node)) {
      if (!KEYWORDS.has(k) && !ANNOTATIONS.has(k)) {
        throw new SchemaError(`${where}: unsupported JSON Schema keyword ${JSON.stringify(k)}`);
      }
    }
    const checks = keywordChecks(node, doc, where);
    fn = (v, path, depth) => {
      if (depth > MAX_DEPTH) return `${path || name}: nested more than ${MAX_DEPTH} levels`;
      for (const c of checks) {
        const problem = c(v, path, depth);
        if (problem) return problem;
      }
      return null;
    };
    return proxy;
  }

  function resolve(ref, doc, where) {
    const hash = ref.indexOf('#');
    const docName = hash < 0 ? ref : ref.slice(0, hash);
    let target = doc;
    if (docName) {
      if (!hasOwn(registry, docName)) throw new SchemaError(`${where}: unknown $ref ${ref}`);
      target = registry[docName];
    }
    const frag = hash < 0 ? '' : ref.slice(hash);
    return compile(frag ? pointer(target, frag, where) : target, target, `${where}->${ref}`);
  }

  function keywordChecks(s, doc, where) {
    const out = [];
    const at = (path) => path || name;
    if (s.$ref !== undefined) {
      let target = null;  // resolved lazily: a $def may refer to itself
      out.push((v, path, depth) => {
        target = target || resolve(s.$ref, doc, where);
        return target(v, path, depth);
      });
    }
    if (s.type !== undefined) {
      const types = Array.isArray(s.type) ? s.type : [s.type];
      out.push((v, path) => (types.some((t) => hasType(v, t)) ? null
        : `${at(path)} must be ${types.join(' or ')}, not ${typeOf(v)}`));
    }
    if (s.enum !== undefined) {
      out.push((v, path) => (s.enum.some((e) => equal(e, v)) ? null
        : `${at(path)} ${shown(v)} is not one of ${s.enum.map(shown).join(', ')}`));
    }
    if (s.const !== undefined) {
      out.push((v, path) => (equal(s.const, v) ? null
        : `${at(path)} must be ${shown(s.const)}, not ${shown(v)}`));
    }
    stringChecks(s, where, out, at);
    numberChecks(s, out, at);
    objectChecks(s, doc, where, out, at);
    arrayChecks(s, doc, where, out, at);
    combinatorChecks(s, doc, where, out, at);
    return out;
  }

  function stringChecks(s, where, out, at) {
    if (s.pattern !== undefined) {
      let re;
      try {
        re = new RegExp(s.pattern, 'u');
      } catch (e) {
        throw new SchemaError(`${where}: pattern ${shown(s.pattern)} is not a valid regular ` +
          `expression: ${e.message}`);
      }
      out.push((v, path) => (typeof v !== 'string' || re.test(v) ? null
        : `${at(path)} ${shown(v)} does not match ${s.pattern}`));
    }
    const len = (v) => [...v].length;  // code points, as JSON Schema counts
    if (s.minLength !== undefined) {
      out.push((v, path) => (typeof v !== 'string' || len(v) >= s.minLength ? null
        : `${at(path)} is shorter than ${s.minLength} characters`));
    }
    if (s.maxLength !== undefined) {
      out.push((v, path) => (typeof v !== 'string' || len(v) <= s.maxLength ? null
        : `${at(path)} is longer than ${s.maxLength} characters`));
    }
  }

  function numberChecks(s, out, at) {
    const rule = (key, ok, words) => {
      if (s[key] === undefined) return;
      out.push((v, path) => (typeof v !== 'number' || ok(v, s[key]) ? null
        : `${at(path)} is ${v}, it must be ${words} ${s[key]}`));
    };
    rule('minimum', (v, m) => v >= m, 'at least');
    rule('maximum', (v, m) => v <= m, 'at most');
    rule('exclusiveMinimum', (v, m) => v > m, 'more than');
    rule('exclusiveMaximum', (v, m) => v < m, 'less than');
    rule('multipleOf', (v, m) => Number.isInteger(v / m), 'a multiple of');
  }

  function objectChecks(s, doc, where, out, at) {
    const isObj = (v) => typeOf(v) === 'object';
    const props = s.properties || {};
    const propChecks = Object.fromEntries(Object.entries(props)
      .map(([k, sub]) => [k, compile(sub, doc, `${where}.properties.${k}`)]));
    const patterns = Object.entries(s.patternProperties || {})
      .map(([p, sub]) => [new RegExp(p, 'u'), compile(sub, doc, `${where}.patternProperties`)]);
    const extra = s.additionalProperties === undefined ? null
      : compile(s.additionalProperties, doc, `${where}.additionalProperties`);
    const keyCheck = s.propertyNames === undefined ? null
      : compile(s.propertyNames, doc, `${where}.propertyNames`);
    const required = s.required || [];
    out.push((v, path, depth) => {
      if (!isObj(v)) return null;
      const keys = Object.keys(v);
      for (const k of required) if (!hasOwn(v, k)) return `${at(path)} lacks ${JSON.stringify(k)}`;
      if (s.minProperties !== undefined && keys.length < s.minProperties) {
        return `${at(path)} has fewer than ${s.minProperties} entries`;
      }
      if (s.maxProperties !== undefined && keys.length > s.maxProperties) {
        return `${at(path)} has more than ${s.maxProperties} entries`;
      }
      for (const k of keys) {
        const p = join(path, k);
        if (keyCheck) {
          const problem = keyCheck(k, `a key of ${at(path)}`, depth + 1);
          if (problem) return problem;
        }
        let matched = false;
        if (hasOwn(propChecks, k)) {
          matched = true;
          const problem = propChecks[k](v[k], p, depth + 1);
          if (problem) return problem;
        }
        for (const [re, check] of patterns) {
          if (!re.test(k)) continue;
          matched = true;
          const problem = check(v[k], p, depth + 1);
          if (problem) return problem;
        }
        if (!matched && extra) {
          if (s.additionalProperties === false) return `${at(path)} has an unknown key ${shown(k)}`;
          const problem = extra(v[k], p, depth + 1);
          if (problem) return problem;
        }
      }
      return null;
    });
  }

  function arrayChecks(s, doc, where, out, at) {
    const prefix = (s.prefixItems || []).map((sub, i) => compile(sub, doc, `${where}.prefixItems[${i}]`));
    const items = s.items === undefined ? null : compile(s.items, doc, `${where}.items`);
    out.push((v, path, depth) => {
      if (!Array.isArray(v)) return null;
      if (s.minItems !== undefined && v.length < s.minItems) {
        return `${at(path)} has fewer than ${s.minItems} items`;
      }
      if (s.maxItems !== undefined && v.length > s.maxItems) {
        return `${at(path)} has more than ${s.maxItems} items`;
      }
      for (let i = 0; i < v.length; i++) {
        const check = i < prefix.length ? prefix[i] : items;
        if (s.items === false && i >= prefix.length) return `${at(path)} has too many items`;
        const problem = check ? check(v[i], join(path, i), depth + 1) : null;
        if (problem) return problem;
      }
      if (s.uniqueItems) {
        for (let i = 1; i < v.length; i++) {
          for (let j = 0; j < i; j++) {
            if (equal(v[i], v[j])) return `${at(path)} lists ${shown(v[i])} twice`;
          }
        }
      }
      return null;
    });
  }

  function combinatorChecks(s, doc, where, out, at) {
    const list = (key) => (s[key] || []).map((sub, i) => compile(sub, doc, `${where}.${key}[${i}]`));
    const anyOf = list('anyOf');
    const oneOf = list('oneOf');
    const allOf = list('allOf');
    const not = s.not === undefined ? null : compile(s.not, doc, `${where}.not`);
    if (anyOf.length) {
      out.push((v, path, depth) => {
        const problems = [];
        for (const c of anyOf) {
          const p = c(v, path, depth);
          if (!p) return null;
          problems.push(p);
        }
        return problems.length === 1 ? problems[0]
          : `${at(path)} matches none of the allowed forms (${problems.join('; ')})`;
      });
    }
    if (oneOf.length) {
      out.push((v, path, depth) => {
        const ok = oneOf.filter((c) => !c(v, path, depth)).length;
        return ok === 1 ? null : `${at(path)} matches ${ok} of the forms, not exactly one`;
      });
    }
    for (const c of allOf) out.push(c);
    if (not) out.push((v, path, depth) => (not(v, path, depth) ? null : `${at(path)} is not allowed`));
  }

  const root = compile(schema, schema, '#');
  return (value) => root(value, rootPath, 0);
}

/** Validate `value`; throws `ErrorClass(prefix + problem)` on the first problem. */
export function validate(schema, value, { registry, name, prefix = '', ErrorClass = SchemaError } = {}) {
  const problem = compileSchema(schema, { registry, name })(value);
  if (problem) throw new ErrorClass(`${prefix}${problem}`);
  return value;
}
