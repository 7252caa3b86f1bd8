"""The format is specified once: the typed metadata (edgetrain.format._spec), the JSON Schema
generated from it, the Python reader's checks and the documentation say the same thing.

The core test validates a corpus -- every kind of file the compiler writes (losses, optimizers,
LoRA, feature signatures, batch-norm training, renamed public names), the stored version-1
file, and thousands of seeded mutations of their metadata -- with ``jsonschema`` against the
shipped schema and with the Python reader, and requires them to agree on every document: both
accept or both refuse, and where the reader alone refuses, it names one of the listed rules
between fields (``RULES``), which no schema expresses.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from jsonschema import Draft202012Validator, ValidationError, validators

import edgetrain as et
from _models import mlp
from conftest import long_fuzz
from edgetrain import format as fmt
from edgetrain.format import _jsontypes as jt
from edgetrain.format._schema import RULES, RuleError, parse_meta, validate_meta
from edgetrain.format._spec import _FORBIDDEN, MAX_FLOAT, NONPRINTABLE, _node
from test_compiler import _mlp as renamed_mlp
from test_fuzz_model import NASTY, _slots
from test_model_files import _bn_cnn

ROOT = Path(__file__).resolve().parent.parent
V1 = ROOT / "tests" / "fixtures" / "format_v1" / "model.onnx"


# -- the corpus ----------------------------------------------------------------------------------

COMPILED: dict[str, Any] = {
    "mlp_ce_sgd": lambda: et.compile(mlp(hidden=8), optimizer=et.optim.SGD(lr=0.1)),
    "mlp_ce_smooth_adam": lambda: et.compile(
        mlp(hidden=8), loss=et.losses.CrossEntropy(label_smoothing=0.1, reduction="sum"),
        optimizer=et.optim.Adam(lr=2e-3, betas=(0.8, 0.99), weight_decay=0.01)),
    "mlp_onehot": lambda: et.compile(mlp(hidden=8), labels="onehot"),
    "mlp_mse_nesterov": lambda: et.compile(mlp(hidden=8), loss="mse", optimizer=et.optim.SGD(
        lr=0.05, momentum=0.9, nesterov=True, clip_norm=1.0)),
    "mlp_l1_adamw": lambda: et.compile(mlp(hidden=8), loss="l1", optimizer=et.optim.AdamW()),
    "mlp_huber_dampening": lambda: et.compile(mlp(hidden=8), loss="huber", optimizer=et.optim.SGD(
        lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.01)),
    "mlp_bce": lambda: et.compile(mlp(hidden=8, classes=1), loss="bce_with_logits"),
    "mlp_lora": lambda: et.compile(mlp(hidden=8), optimizer="adam",
                                   trainable=et.select.lora(rank=2, targets=["fc*"])),
    "mlp_features": lambda: et.compile(mlp(hidden=8), trainable=["fc2.*"],
                                       optimizer=et.optim.SGD(lr=0.1, momentum=0.5),
                                       split_features=True),
    "cnn_bn_train_adam": lambda: et.compile(_bn_cnn(), optimizer="adam", batch_norm="train"),
    "renamed_public_names": lambda: et.compile(renamed_mlp({"h": "y", "a": "loss", "W2": "lr"})),
}


def _doc(model: onnx.ModelProto) -> dict[str, Any]:
    raw = next(p.value for p in model.metadata_props if p.key == fmt.META_KEY)
    return parse_meta(raw)


@pytest.fixture(scope="module")
def corpus() -> dict[str, dict[str, Any]]:
    docs = {name: _doc(make().proto) for name, make in COMPILED.items()}
    docs["format_v1_fixture"] = _doc(onnx.load(str(V1)))
    return docs


# -- jsonschema with ECMA-262 patterns -----------------------------------------------------------

def _ecma(pattern: str) -> str:
    """JSON Schema patterns are ECMA-262: ``$`` ends the string. Python's ``$`` also matches
    before a final newline, so the schema's ``^…$`` becomes ``^…\\Z`` here."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not re.search(_ecma(pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = validators.extend(Draft202012Validator, {"pattern": _pattern})


@pytest.fixture(scope="module")
def shipped() -> Any:
    with open(fmt.SCHEMA_PATH, encoding="utf-8") as f:
        schema = json.load(f)
    Draft202012Validator.check_schema(schema)
    return EcmaValidator(schema)


def _structure_ok(doc: Any) -> bool:
    try:
        _node().check(doc, "")
    except et.FormatError:
        return False
    return True


def _judge(doc: Any, validator: Any) -> str:
    """'accepted', 'refused' (by both) or 'rule' (a rule between fields, after the schema);
    fails the test when the schema and the Python reader disagree."""
    schema_ok = validator.is_valid(doc)
    assert _structure_ok(doc) == schema_ok, (
        f"schema says {schema_ok}, the reader's structure check says otherwise: "
        f"{json.dumps(doc)[:400]}")
    try:
        validate_meta(doc)
    except RuleError as e:
        assert schema_ok and e.rule in RULES, str(e)
        return "rule"
    except et.FormatError as e:
        assert not schema_ok, str(e)
        msg = str(e)
        assert msg.startswith("invalid edgetrain file: ") and "\n" not in msg, msg
        return "refused"
    assert schema_ok
    return "accepted"


# -- seeded mutations ----------------------------------------------------------------------------

#: Values at and across every bound the spec sets, and values of every JSON type.
BOUNDARY: list[Any] = [
    None, True, False, 0, -0.0, 1, 1.0, 2.0, 2.5, -1, 2, 3, 2**31 - 1, 2**31, 2**53, 2**53 + 1,
    -2**53, -2**53 - 1, float(2**53), 1e-30, 9.9e-31, 0.5e-30, MAX_FLOAT, 3.5e38, -MAX_FLOAT,
    -3.5e38, 1e300, 10**30, 10**400, 65504.0, 65505.0, 255, 256, -129,
    "", "a", "x" * 63, "x" * 64, "x" * 65, "n" * 256, "n" * 257, "t" * 1024, "t" * 1025,
    "a\n", "a\nb", "\t", " ", "a b", "héllo", "名前", "😀", "\u0378", "\u00a0", "\u200b",
    "\u202e", "\ufeff", "\U000e0041", "\U000f0000", "\U0010fffe", "main", "training_info/0",
    "training_info/01", "training_info/9999", "training_info/10000", "training_info/1\u0663",
    "graph", "builtin", "float32", "int64", "str", "complex64", "data", "label", "lr",
    "features", "prediction", "loss", "metric", "other", "index", "onehot", "multiclass",
    "binary", "regression", "infer", "train", "eval", "save", "restore", "checkpoint_path",
    "edgetrain.step", "logits", "y", "x", "1abc", "a-b.c_d", "a/b:c[0]",
    [], [1], [None], ["batch", 8], [True], [1.5], ["a", "a"], ["x"] * 17, {}, {"a": 1},
    {"name": "sgd", "lr": 0.1}, *NASTY,
]
KEYS = ["name", "lr", "role", "optional", "default", "graph", "updates", "kind", "task",
        "producer", "extra", "A", "B", "a-b", "1x", "x" * 65, "", "n\u200b", "features",
        "train_features", "eval_features", "infer_features", "lora", "selection", "betas"]


def _mutate(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One to three edits of a copy of ``doc``, anywhere in it."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        slots = _slots(doc)
        if not slots:
            break
        c, k = slots[rng.randrange(len(slots))]
        op = rng.choice(["replace", "replace", "replace", "delete", "rename", "add", "copy"])
        if op == "replace":  # half the time by a value of the same JSON type
            same = [v for v in BOUNDARY if type(v) is type(c[k])]
            c[k] = copy.deepcopy(rng.choice(same if same and rng.random() < 0.5 else BOUNDARY))
        elif op == "delete":
            del c[k]
        elif op == "rename" and isinstance(c, dict):
            c[rng.choice(KEYS)] = c.pop(k)
        elif op == "add" and isinstance(c[k], dict):
            c[k][rng.choice(KEYS)] = copy.deepcopy(rng.choice(BOUNDARY))
        elif op == "add" and isinstance(c[k], list):
            c[k].append(copy.deepcopy(rng.choice(c[k]) if c[k] else rng.choice(BOUNDARY)))
        else:
            c2, k2 = slots[rng.randrange(len(slots))]
            c[k] = copy.deepcopy(c2[k2])
    return doc


def _run_mutations(corpus: dict[str, dict[str, Any]], validator: Any, n: int
                   ) -> dict[str, int]:
    counts = {"accepted": 0, "refused": 0, "rule": 0, "parse": 0}
    names = sorted(corpus)
    for seed in range(n):
        rng = random.Random(seed)
        counts[_outcome(_mutate(corpus[names[seed % len(names)]], rng), validator)] += 1
    return counts


def _outcome(doc: dict[str, Any], validator: Any) -> str:
    """Through JSON text, as a file holds it: the parse rules come first ('parse')."""
    try:
        parsed = parse_meta(json.dumps(doc))
    except et.FormatError:
        return "parse"
    return _judge(parsed, validator)


def test_every_compiled_kind_of_file_is_valid_under_both(corpus: dict[str, Any],
                                                         shipped: Any) -> None:
    for name, doc in corpus.items():
        assert _judge(doc, shipped) == "accepted", name


def test_schema_and_reader_agree_on_mutated_metadata(corpus: dict[str, Any],
                                                     shipped: Any) -> None:
    counts = _run_mutations(corpus, shipped, 600)
    # Every outcome is reached often: the comparison is not vacuous.
    assert counts["accepted"] >= 30 and counts["refused"] >= 300 and counts["rule"] >= 25, \
        counts


@pytest.mark.slow
@long_fuzz
def test_schema_and_reader_agree_on_many_mutated_documents(corpus: dict[str, Any],
                                                           shipped: Any) -> None:
    counts = _run_mutations(corpus, shipped, 20000)
    assert counts["accepted"] >= 1000 and counts["rule"] >= 1000, counts


#: Slots of a document holding each kind of value: an integer, a number, a size, a name, an
#: identifier, a text, a graph reference, an enum, a flag, a config parameter.
SLOTS = {
    "format_version": lambda d: (d, "format_version"),
    "lr": lambda d: (d["optimizer"], "lr"),
    "default": lambda d: (d["signatures"]["train"]["inputs"][2], "default"),
    "dim": lambda d: (d["signatures"]["infer"]["inputs"][0]["shape"], 1),
    "step": lambda d: (d, "step"),
    "loss_name": lambda d: (d["loss"], "name"),
    "producer": lambda d: (d, "producer"),
    "graph": lambda d: (d["signatures"]["eval"], "graph"),
    "role": lambda d: (d["signatures"]["eval"]["outputs"][1], "role"),
    "flag": lambda d: (d, "classification"),
    "param": lambda d: (d["loss"], "reduction"),
}


def _boundaries(base: dict[str, Any], validator: Any, slots: list[Any]) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    for slot in slots:
        for value in BOUNDARY:
            doc = copy.deepcopy(base)
            c, k = slot(doc)
            c[k] = copy.deepcopy(value)
            outcome = _outcome(doc, validator)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def _kinds(node: jt.Node, out: dict[str, jt.Node]) -> dict[str, jt.Node]:
    """Every node of the spec that the schema names in ``$defs``, by that name."""
    ref = (node.spec.ref if isinstance(node, jt.String) else node.ref
           if isinstance(node, jt.Named) else node.bounds.ref if isinstance(node, jt.Number)
           else node.cls.__name__ if isinstance(node, jt.Object) else None)
    if ref is not None:
        if ref in out:
            return out
        out[ref] = node
    children: list[jt.Node] = []
    if isinstance(node, jt.Object):
        children = [f.node for f in node.fields]
        if node.extra is not None:
            children.append(node.extra[1])
    elif isinstance(node, jt.Dict):
        children = [node.key, node.value]
    elif isinstance(node, jt.Array):
        children = [node.item]
    elif isinstance(node, jt.AnyOf):
        children = node.alts
    elif isinstance(node, jt.Named):
        children = [node.node]
    for child in children:
        _kinds(child, out)
    return out


def test_every_kind_agrees_on_boundary_values(corpus: dict[str, Any]) -> None:
    """Each definition of the shipped schema against the spec's node of the same name, on
    every boundary value and on every object of that kind in the corpus, mutated."""
    with open(fmt.SCHEMA_PATH, encoding="utf-8") as f:
        schema = json.load(f)
    kinds = _kinds(_node(), {})
    del kinds["Metadata"]  # the document itself, tested whole above
    assert set(kinds) == set(schema["$defs"])
    samples: dict[str, list[Any]] = {ref: list(BOUNDARY) for ref in kinds}
    rng = random.Random(0)
    for doc in corpus.values():
        sigs = doc["signatures"].values()
        found = {"SignatureSpec": list(sigs), "LossConfig": [doc["loss"]],
                 "OptimizerConfig": [doc["optimizer"]],
                 "TensorSpec": [x for s in sigs for x in (*s["inputs"], *s["outputs"])],
                 "LoraAdapter": doc.get("lora_merge", []), "FeatureSpec": [doc["features"]]
                 if "features" in doc else []}
        for ref, objs in found.items():
            mutated = [_mutate({"v": o}, rng) for o in objs for _ in range(8)]
            samples[ref] += objs + [m["v"] for m in mutated if "v" in m]
    outcomes = {True: 0, False: 0}
    for ref, node in kinds.items():
        validator = EcmaValidator({"$schema": schema["$schema"], "$defs": schema["$defs"],
                                   "$ref": f"#/$defs/{ref}"})
        for value in samples[ref]:
            try:
                node.check(value, "")
                ok = True
            except et.FormatError:
                ok = False
            if any(isinstance(s, str) and re.search("[\ud800-\udfff]", s)
                   for s in _strings(value)):
                continue  # lone surrogates never reach the schema (the parse refuses them)
            assert validator.is_valid(value) == ok, (ref, value)
            outcomes[ok] += 1
    assert outcomes[True] >= 200 and outcomes[False] >= 1000, outcomes


def _strings(value: Any) -> list[Any]:
    return [value] if not isinstance(value, (dict, list)) else [
        *(value.keys() if isinstance(value, dict) else []),
        *(s for v in (value.values() if isinstance(value, dict) else value)
          for s in _strings(v))]


@pytest.mark.slow
def test_boundaries_of_each_kind_agree(corpus: dict[str, Any], shipped: Any) -> None:
    """Every boundary value in a slot of every kind: both sides agree on each."""
    outcomes = _boundaries(corpus["mlp_ce_sgd"], shipped, list(SLOTS.values()))
    assert outcomes["accepted"] >= 100 and outcomes["refused"] >= 500, outcomes


@pytest.mark.slow
def test_boundaries_in_every_slot_agree(corpus: dict[str, Any], shipped: Any) -> None:
    base = corpus["mlp_ce_sgd"]
    slots = [lambda d, i=i: _slots(d)[i] for i in range(len(_slots(base)))]
    outcomes = _boundaries(base, shipped, slots)
    assert outcomes["accepted"] >= 500 and outcomes["rule"] >= 500, outcomes


def test_nonprintable_characters_are_refused_alike(corpus: dict[str, Any],
                                                  shipped: Any) -> None:
    """Both ends of every range of the frozen table, and their neighbours, in a text."""
    base = corpus["mlp_ce_sgd"]
    for lo, hi in NONPRINTABLE:
        for cp in (lo, hi, lo - 1, hi + 1):
            if cp < 0 or 0xD800 <= cp <= 0xDFFF or cp > 0x10FFFF:
                continue
            doc = copy.deepcopy(base)
            doc["producer"] = f"edgetrain{chr(cp)}x"
            forbidden = re.search(f"[{_FORBIDDEN}]", chr(cp)) is not None
            assert forbidden == (cp in (lo, hi) or any(a <= cp <= b for a, b in NONPRINTABLE))
            assert _judge(doc, shipped) == ("refused" if forbidden else "accepted"), hex(cp)


# -- the shipped artefacts ---------------------------------------------------------------------

def test_shipped_schema_and_docs_are_generated_from_the_spec() -> None:
    with open(fmt.SCHEMA_PATH, encoding="utf-8") as f:
        assert json.load(f) == fmt.metadata_schema()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "format_schema.py"), "--check"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_schema_describes_versions_one_to_three() -> None:
    schema = fmt.metadata_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["format_version"]["maximum"] == fmt.FORMAT_VERSION == 3
    assert "role" not in schema["$defs"]["TensorSpec"]["required"]
    assert "task" not in schema["required"]


def test_schema_patterns_mean_the_same_in_javascript(tmp_path: Path) -> None:
    """Every pattern of the shipped schema compiles as a JavaScript RegExp (u flag) and
    judges sample strings as Python does."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    samples = [s for s in BOUNDARY if isinstance(s, str)] + [
        f"a{chr(lo)}b" for lo, _ in NONPRINTABLE] + [f"a{chr(hi + 1)}b" for _, hi in
                                                      NONPRINTABLE if hi < 0x10FFFF]
    patterns = sorted({d["pattern"] for d in fmt.metadata_schema()["$defs"].values()
                       if "pattern" in d})
    script = tmp_path / "patterns.mjs"
    script.write_text(
        "import fs from 'node:fs';\n"
        "const {patterns, samples} = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));\n"
        "console.log(JSON.stringify(patterns.map(p => { const r = new RegExp(p, 'u');\n"
        "  return samples.map(s => r.test(s)); })));\n")
    data = tmp_path / "in.json"
    data.write_text(json.dumps({"patterns": patterns, "samples": samples}))
    r = subprocess.run([node, str(script), str(data)], capture_output=True, text=True,
                       timeout=60, check=True)
    js = json.loads(r.stdout)
    py = [[re.search(_ecma(p), s) is not None for s in samples] for p in patterns]
    assert js == py
    assert any(any(row) for row in py) and not all(all(row) for row in py)


# -- typed metadata ----------------------------------------------------------------------------

def test_typed_metadata_round_trips(corpus: dict[str, Any]) -> None:
    for name, doc in corpus.items():
        meta = fmt.Metadata.from_json(doc)
        assert fmt.Metadata.from_json(meta.to_json()) == meta, name
        if name != "format_v1_fixture":  # the compiler writes exactly to_json()
            assert meta.to_json() == doc, name


def test_version_1_documents_read_as_version_2(corpus: dict[str, Any]) -> None:
    """Without roles and task, a document reads as the compiler would have written it."""
    derived = 0
    for name, doc in corpus.items():
        if name in ("format_v1_fixture", "renamed_public_names"):
            continue  # version 1 never renamed y/lr/loss; the fixture is tested below
        doc = copy.deepcopy(doc)
        doc["signatures"].pop("train_steps", None)  # version 1 had no multi-step signature
        old = copy.deepcopy(doc)
        old["format_version"] = 1
        del old["task"]
        for spec in old["signatures"].values():
            for x in (*spec["inputs"], *spec["outputs"]):
                derived += x.pop("role", None) is not None
        want = dataclasses.replace(fmt.Metadata.from_json(doc), format_version=1)
        assert fmt.Metadata.from_json(old) == want, name
    assert derived > 100


def test_stored_version_1_file_gets_roles_and_task() -> None:
    m = et.load(str(V1))
    assert m.meta.format_version == 1 and m.meta.task == "multiclass"
    train = m.meta.signatures["train"]
    assert [(s.name, s.role) for s in train.inputs] == [("x", "data"), ("y", "label"),
                                                        ("lr", "lr")]
    assert [(s.name, s.role) for s in m.meta.signatures["eval"].outputs] == [
        ("loss", "loss"), ("accuracy", "metric")]
    assert m.meta.signatures["infer"].outputs[0].role == "prediction"
    assert m.input_name("train", "label") == "y" and m.input_name("train", "lr") == "lr"


def test_version_2_requires_roles_and_task(corpus: dict[str, Any]) -> None:
    doc = copy.deepcopy(corpus["mlp_ce_sgd"])
    del doc["signatures"]["train"]["inputs"][1]["role"]
    with pytest.raises(RuleError, match="has no role") as info:
        validate_meta(doc)
    assert info.value.rule == "roles"
    doc = copy.deepcopy(corpus["mlp_ce_sgd"])
    del doc["task"]
    with pytest.raises(RuleError, match="no task"):
        validate_meta(doc)


def test_messages_name_the_field(corpus: dict[str, Any]) -> None:
    doc = copy.deepcopy(corpus["mlp_ce_sgd"])
    doc["signatures"]["train"]["inputs"][2]["default"] = "0.1"
    with pytest.raises(et.FormatError, match=r"signatures\.train\.inputs\[2\]\.default must be "
                                             r"a number in .*; got '0\.1'"):
        validate_meta(doc)
    doc = copy.deepcopy(corpus["mlp_ce_sgd"])
    doc["optimizer"]["lr\n"] = 1.0
    with pytest.raises(et.FormatError, match=r"a key of optimizer must be an identifier"):
        validate_meta(doc)


def test_integers_are_json_integers(corpus: dict[str, Any]) -> None:
    """2.0 is the integer 2 (JavaScript cannot tell them apart); 2.5 and true are not."""
    doc = copy.deepcopy(corpus["mlp_ce_sgd"])
    doc["format_version"] = 2.0
    doc["signatures"]["infer"]["inputs"][0]["shape"][1] = 8.0
    meta = fmt.Metadata.from_json(doc)
    assert meta.format_version == 2 and type(meta.format_version) is int
    assert meta.signatures["infer"].inputs[0].shape[1] == 8
    for bad in (2.5, True, "2"):
        doc["format_version"] = bad
        with pytest.raises(et.FormatError, match="format_version must be an integer in"):
            validate_meta(doc)


def test_lone_surrogates_are_refused_when_parsing(corpus: dict[str, Any]) -> None:
    raw = json.dumps(corpus["mlp_ce_sgd"]).replace('"edgetrain 0.1.0"', '"edgetrain \\ud800"')
    with pytest.raises(et.FormatError, match="lone surrogate"):
        parse_meta(raw)


# -- the commit rule and the version ----------------------------------------------------------

def test_commit_rule() -> None:
    assert fmt.committed(0, 1) and fmt.committed(np.int64(41), np.array(42))
    assert not fmt.committed(3, 3)  # a skipped step
    assert not fmt.committed(3, 5) and not fmt.committed(3, 2)  # a jump, a step back
    big = np.iinfo(np.int64).max
    assert not fmt.committed(np.int64(big), np.int64(big) + np.int64(0) - big - 1)  # wrapped
    # A call of K steps (train_steps) counts K: fewer means one did not count, more a jump.
    assert fmt.committed(10, 14, steps=4) and fmt.committed(np.int64(0), np.array(3), 3)
    assert not fmt.committed(10, 13, steps=4) and not fmt.committed(10, 15, steps=4)
    assert not fmt.committed(10, 11, steps=4)


def test_train_steps_rule(corpus: dict[str, Any]) -> None:
    """``train_steps`` takes a rate per step and returns a loss per step, or it is refused."""
    doc = corpus["mlp_ce_sgd"]
    assert "train_steps" in doc["signatures"]
    validate_meta(doc)
    for where, field, shape in (("inputs", "lr", []), ("outputs", "loss", [])):
        bad = copy.deepcopy(doc)
        spec = next(s for s in bad["signatures"]["train_steps"][where] if s["role"] == field)
        spec["shape"] = shape
        with pytest.raises(RuleError, match="train_steps") as info:
            validate_meta(bad)
        assert info.value.rule == "steps"


@pytest.mark.parametrize("backend", ["onnxruntime", "reference"])
def test_backends_commit_only_a_counter_advanced_by_one(backend: str) -> None:
    """A step graph that advances the counter by two is not a step: nothing is committed."""
    tm = et.compile(mlp(hidden=8), optimizer=et.optim.SGD(lr=0.1))
    proto = onnx.ModelProto()
    proto.CopyFrom(tm.proto)
    step_out = tm.meta.signatures["train"].updates[tm.meta.step]
    g = proto.training_info[0].algorithm
    producer = next(n for n in g.node if step_out in n.output)
    producer.output[list(producer.output).index(step_out)] = "counter_plus_one"
    two = onnx.helper.make_tensor("two_more", onnx.TensorProto.INT64, [], [1])
    g.initializer.append(two)
    g.node.append(onnx.helper.make_node("Add", ["counter_plus_one", "two_more"], [step_out]))
    m = et.load(proto, backend=backend)
    before = m.state()
    x, y = np.ones((2, 8, 8), np.float32), np.array([1, 2])
    with pytest.raises(et.NonFiniteError):
        m.run("train", x=x, y=y)
    after = m.state()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    normal = et.load(tm.proto, backend=backend)
    normal.run("train", x=x, y=y)
    assert normal.step == 1


def test_checkpoints_record_the_format_version(tmp_path: Path) -> None:
    m = et.compile(mlp(hidden=8)).load()
    path = m.save(tmp_path / "ck.safetensors")
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    assert header["__metadata__"]["format_version"] == str(fmt.FORMAT_VERSION) == "3"
    m.restore(path)
