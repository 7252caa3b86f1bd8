"""ONNX's own operator test cases as a gradient conformance suite.

``onnx.backend.test.case.node.collect_testcases()`` rebuilds every node test of the installed
onnx in memory: a one-node model and the inputs ONNX's authors chose (drawn with
``np.random.seed(0)``). Each case becomes a training problem for edgetrain, and its gradient
is checked against finite differences that involve no edgetrain code at all.

**The training problem.** Every input of the case becomes an initializer (integer inputs stay
constants the gradient rules can read). The float inputs the op's schema does not mark
``NonDifferentiable`` are the trainable parameters; the others (Clip's bounds, Resize's
scales, …) stay constants, and so does a float input holding an infinity or NaN where others
can be trained (an attention mask's ``-inf``: edgetrain's step commits only finite weights, by
design). The case's float outputs not marked ``NonDifferentiable`` feed a
scalar ``s = Σ_j sum(out_j · R_j)`` with fixed N(0, 1) weights ``R_j`` seeded from the case
name; ``s`` is the model's only output, shaped ``[1]``. The node keeps its name (an unnamed
one gets the case's name, so refusals can name it) and every value gets the prefix ``v_``:
ONNX's tests name most values ``y``, which edgetrain's train signature takes for its label
(a bug of its own: ``test_conformance_onnx.py::test_inner_value_named_like_the_label``).

**Reading the gradient through the public API.** The model is compiled with
``loss="l1"`` and ``et.optim.SGD(lr=1.0)`` and one ``train`` step runs with the label
``y = s₀ − (1 + |s₀|)``, where ``s₀`` comes from the model's own ``infer``. Then
``loss = |s − y|`` and, since ``s − y ≥ 1`` at that point, ``d loss/d s = +1`` exactly (the
derivative of ``|·|`` away from 0 is its sign: no rounding). Plain SGD writes
``w₁ = w₀ − 1.0 · d loss/d w`` in one rounding, so ``w₀ − w₁`` is ``d s/d w`` to within one ulp
of ``w``. The step's reported loss must equal ``1 + |s₀|`` (the train step's own forward) and
``s₀`` must equal the oracle's ``s``.

**Precision.** The case is cast to float64 where the op's schema allows ``double`` (inputs and
outputs of a type that allows it, type attributes — ``to``, ``dtype``, ``softmax_precision``,
``stash_type``, also where left at a float32 default —, subgraph bodies) and, with at least one
input cast, ``onnx.reference`` still reproduces the case's expected outputs: then edgetrain
runs float64 on its ``reference`` backend and the finite differences are float64
(``regime = float64``). Otherwise edgetrain trains the case as it is, in float32
(``regime = float32``) or float16 (``regime = float16``), and the
finite differences run on a float64 copy that ignores the schema's types where
``onnx.reference`` can run one (``oracle = float64``), else on the float32 case itself.

**Finite differences** (``onnx.reference``, with exact float64 ``Erf``/``Gelu`` and
CausalConvWithState's SiLU: its own round to float32, and the L1 norm of LpNormalization: its
own forgets the absolute value). For element ``i`` with step ``h`` (1e-6 in float64;
``1e-3 · max(1, |x_i|)`` for a float32 oracle): left ``l = (s(x) − s(x − h))/h``, right
``r = (s(x + h) − s(x))/h``, central ``c = (l + r)/2``, with the step the floats really took.
A tensor of at most 64 elements is checked element by element; a larger one on 32 elements
drawn with the case's seed plus 4 random directions (``Σ g·v`` against the directional
differences; 8 and 2 past 10 000 elements, where one evaluation of a pooling op takes a
second), so every element takes part.

**Tolerance (one rule for every case, never tuned per case).** float64:
``|g − c| ≤ 1e-5·|c| + 1e-7 + 100·ε·S/h``, where ``S = Σ_j sum(|out_j · R_j|)`` bounds the
rounding of ``s`` (100 ulps of it, divided by the step, is the differences' own noise).
float32 model, float64 oracle: ``1e-3·|c| + 1e-5 + 1e-6·S``; float16 model (``regime =
float16``), float64 oracle: ``1e-2·|c| + 1e-4 + 1e-5·S``. float32 oracle:
``1e-2·|c| + 1e-4 + 10·ε₃₂·S/h``.

**Kinks.** Where the one-sided differences disagree (``|r − l| > 1e-3·(1 + |c|)``: ReLU at 0,
ties in Max or MaxPool, Floor at an integer), the derivative does not exist there and any
value between them is a valid subgradient: the check becomes ``min(l, r) − tol ≤ g ≤
max(l, r) + tol``. A probe where ``s(x ± h)`` is not finite or not defined (the step leaves
the op's domain, or changes an output's shape: Range's limit, OneHot's depth), or where the
loss jumps (a probe that disagrees is repeated with ``h/2``: a one-sided difference that
doubles, far above the rounding noise, means ``s`` moved by the same amount however small
the step — L2 normalization of a zero vector), is skipped and counted
(``info["undefined"]``).

**Not differentiable.** Where the op's schema marks all its float inputs or all its outputs
``NonDifferentiable`` (comparisons, ArgMax, Floor, Sign, but also AffineGrid and DFT, which
are linear), every float input is trained and every output (cast to the float type) feeds
``s``. A refusal is correct (``refused-correctly``) when there is nothing to differentiate,
decided by the math and not by the schema: every output fed to ``s`` is an integer or boolean
(ArgMax, Shape, QuantizeLinear, BitCast), or the loss does not move smoothly at any probe:
each side is stepped by a float32-sized ``h`` and by ``h/2`` (an oracle may round inside an
op), and a change that halves with the step is smooth movement (a kink's sides too), one that
does not is a jump (Floor, Sign, Hardmax at a tie), none is flat. A refusal of anything else
is ``refused``; a zero gradient where the loss is flat is ``correct``.

**Scope rule** (:func:`scope`, decided before running): a case is out of scope when it is a
function-body variant (``_expanded``: the op itself is measured by its own case), its op is
outside the default domain (``ai.onnx.ml``, ``ai.onnx.preview*``), its opset is below 13
(an op's older versions: edgetrain converts opsets 7–12 up with ONNX's version converter,
tested on whole models in tests/test_import_models.py; their ops are measured here at
their current versions), it has sequence, optional or map values, string, bfloat16, float8,
float4 or int4/int2 tensors, its op is random (Bernoulli, Random*, Multinomial; Dropout too:
edgetrain's train step runs Dropout in training mode by design), or it has no non-empty float
input (nothing to train). Decided while running, and listed by reason in the report: ONNX's
own checker rejects the case's model, ``onnx.reference`` does not reproduce its expected
outputs or cannot evaluate it, its loss is not finite at its inputs (inf/NaN data), or no
finite-difference probe is defined.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_causal_conv_with_state import (
    CausalConvWithState as _RefCausalConv,
)

import edgetrain as et

from ._common import (
    CaseTimeout,
    Result,
    crash_detail,
    is_clear_error,
    names_op_and_node,
    one_line,
    time_limit,
)

SUITE = "onnx_ops"
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
_NP_FLOATS = (np.float16, np.float32, np.float64)
RANDOM_OPS = frozenset({"Bernoulli", "RandomNormal", "RandomNormalLike", "RandomUniform",
                        "RandomUniformLike", "Multinomial", "Dropout"})
#: Element types whose finite differences mean nothing here (and strings).
EXCLUDED_TYPES = frozenset(
    getattr(TensorProto, n) for n in (
        "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
        "FLOAT8E8M0", "UINT4", "INT4", "FLOAT4E2M1", "UINT2", "INT2", "STRING")
    if hasattr(TensorProto, n))
MIN_OPSET = 13
#: Attributes that name an element type the op computes or stores in (converted to float64
#: with the case: a float32 softmax inside a float64 case leaves nothing for a 1e-6 step).
TYPE_ATTRIBUTES = ("to", "dtype", "softmax_precision", "stash_type")
PREFIX = "conformance_"
#: Prefix of every value of a case: a case value named ``y`` (ONNX's tests name most outputs
#: so) would otherwise shadow the train signature's label input (see test_conformance_onnx).
VALUE = "v_"
#: edgetrain's time for one compile, or one load and train step, of one case.
CASE_SECONDS = 120.0
#: Element-by-element up to FULL elements; beyond, SAMPLED elements plus DIRECTIONS random
#: directions, and fewer (HUGE_*) past HUGE elements, where one evaluation of a pooling op in
#: onnx.reference takes a second.
FULL, SAMPLED, DIRECTIONS = 64, 32, 4
HUGE, HUGE_SAMPLED, HUGE_DIRECTIONS = 10_000, 8, 2
FD_STEP = 1e-6
#: The step when even the oracle must run in float32 (then the rounding noise dominates).
FD_STEP32 = 1e-3
_EPS = float(np.finfo(np.float64).eps)
_EPS32 = float(np.finfo(np.float32).eps)


# -- the cases ---------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class OpCase:
    """One node test of ONNX: its model and the inputs and outputs ONNX's authors chose."""

    name: str
    op: str
    domain: str
    opset: int | None
    model: onnx.ModelProto
    inputs: tuple[Any, ...]
    outputs: tuple[Any, ...]

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())


@cache
def collect() -> dict[str, OpCase]:
    """Every node test case of the installed onnx, by name (data drawn with a fixed seed)."""
    from onnx.backend.test.case.node import collect_testcases

    state = np.random.get_state()
    np.random.seed(0)  # the case modules draw their inputs from np.random at import
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            raw = collect_testcases()
    finally:
        np.random.set_state(state)
    out: dict[str, OpCase] = {}
    for c in raw:
        assert c.model is not None and c.data_sets
        node = c.model.graph.node[0]
        opset = next((o.version for o in c.model.opset_import
                      if o.domain == (node.domain or "")
                      or (not node.domain and o.domain == "ai.onnx")), None)
        ins, outs = c.data_sets[0]
        out[c.name] = OpCase(c.name, node.op_type, node.domain, opset, c.model,
                             tuple(ins), tuple(outs))
    return out


def scope(case: OpCase) -> str | None:
    """Why ``case`` is out of scope, or None when it is in (see the module docstring)."""
    g = case.model.graph
    if "_expanded" in case.name:
        return "function-body variant (_expanded): the op itself is measured by its own case"
    if case.domain not in ("", "ai.onnx"):
        return f"domain {case.domain}: edgetrain compiles default-domain ops only"
    if case.opset is None or case.opset < MIN_OPSET:
        return f"opset {case.opset} < {MIN_OPSET}: converted up on import, measured at 13+"
    values = list(g.input) + list(g.output)
    if any(v.type.WhichOneof("value") != "tensor_type" for v in values):
        return "sequence, optional or map values"
    if any(v.type.tensor_type.elem_type in EXCLUDED_TYPES for v in values):
        return "string, bfloat16, float8, float4 or int4/int2 tensors"
    if case.op in RANDOM_OPS:
        return "random op (Bernoulli, Random*, Multinomial, and Dropout, which edgetrain's " \
               "train step runs in training mode)"
    if not any(v.type.tensor_type.elem_type in FLOATS and _array(x).size > 0
               for v, x in zip(g.input, case.inputs)):
        return "no non-empty float input: nothing to train"
    return None


# -- the schema: what is differentiable, what may be float64 -----------------------------------

def _schema(case: OpCase) -> Any:
    return onnx.defs.get_schema(case.op, case.opset or 1, case.domain)


def _formal(params: Sequence[Any], i: int) -> Any | None:
    if i < len(params):
        return params[i]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def _nondiff(param: Any | None) -> bool:
    return param is not None and param.differentiation_category == \
        onnx.defs.OpSchema.DifferentiationCategory.NonDifferentiable


def _allows_double(schema: Any, param: Any | None) -> bool:
    if param is None:
        return False
    allowed = {t.type_param_str: t.allowed_type_strs for t in schema.type_constraints}
    return "tensor(double)" in allowed.get(param.type_str, [param.type_str])


def _present(names: Iterable[str]) -> list[int]:
    """Positions of the present (non-empty) names: the case's data lists only those."""
    return [i for i, n in enumerate(names) if n]


# -- float64 conversion ------------------------------------------------------------------------

def _to_double_graph(g: onnx.GraphProto) -> None:
    """Every float/float16 value, constant and cast of a (sub)graph body in float64."""
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tt = vi.type.tensor_type
        if vi.type.WhichOneof("value") == "tensor_type" and tt.elem_type in FLOATS[:2]:
            tt.elem_type = TensorProto.DOUBLE
    for i, t in enumerate(g.initializer):
        if t.data_type in FLOATS[:2]:
            g.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(t).astype(np.float64), t.name))
    for n in g.node:
        _to_double_attrs(n, convert_types=True)


def _to_double_attrs(n: onnx.NodeProto, convert_types: bool) -> None:
    for a in n.attribute:
        if convert_types and a.name in TYPE_ATTRIBUTES and a.i in FLOATS[:2]:
            a.i = TensorProto.DOUBLE
        elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type in FLOATS[:2] \
                and convert_types:
            a.t.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
        elif a.type == onnx.AttributeProto.GRAPH:
            _to_double_graph(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for sub in a.graphs:
                _to_double_graph(sub)


def _as_double(case: OpCase, respect_schema: bool) -> tuple[onnx.ModelProto, list[Any]]:
    """The case in float64 (where the schema allows it, or everywhere) and its inputs."""
    m = onnx.ModelProto()
    m.CopyFrom(case.model)
    g, node = m.graph, m.graph.node[0]
    schema = _schema(case)
    ins = list(case.inputs)
    for k, (vi, pos) in enumerate(zip(g.input, _present(node.input))):
        tt = vi.type.tensor_type
        if tt.elem_type in FLOATS[:2] and (
                not respect_schema or _allows_double(schema, _formal(schema.inputs, pos))):
            tt.elem_type = TensorProto.DOUBLE
            ins[k] = _array(ins[k]).astype(np.float64)
    double_out = False
    for vi, pos in zip(g.output, _present(node.output)):
        tt = vi.type.tensor_type
        if tt.elem_type in FLOATS[:2] and (
                not respect_schema or _allows_double(schema, _formal(schema.outputs, pos))):
            tt.elem_type = TensorProto.DOUBLE
            double_out = True
    convert = double_out or not respect_schema
    if convert:  # a type attribute left at its float32 default names float64 from now on
        given = {a.name for a in node.attribute}
        for name, spec in schema.attributes.items():
            if name in TYPE_ATTRIBUTES and name not in given and \
                    spec.default_value.type == onnx.AttributeProto.INT and \
                    spec.default_value.i in FLOATS[:2]:
                node.attribute.append(helper.make_attribute(name, TensorProto.DOUBLE))
    _to_double_attrs(node, convert_types=convert)
    return m, ins


# -- the training problem ----------------------------------------------------------------------

@dataclass
class Problem:
    """A case turned into a trainable model and its finite-difference twin."""

    case: OpCase
    regime: str                        # "float64" or "float32"
    model: onnx.ModelProto             # every input an initializer; output PREFIX+"s" [1]
    oracle: onnx.ModelProto            # float64; trainables are graph inputs; outputs s, S
    trainable: list[str]
    values: dict[str, np.ndarray]      # trainables' values (float64)
    differentiable: bool               # per the schema
    integer_outputs: bool              # every output fed to s is an integer or boolean
    loss_outputs: list[str]
    node_name: str

    @property
    def oracle_precision(self) -> str:
        """float64 unless onnx.reference cannot run the case in float64 at all."""
        kinds = {v.dtype for v in self.values.values()}
        return "float64" if kinds == {np.dtype(np.float64)} else "float32"


class OracleDisagrees(Exception):
    """``onnx.reference`` does not reproduce the case's own expected outputs."""


def build_problem(case: OpCase) -> Problem:
    """The trainable model of ``case`` (see the module docstring for every choice made)."""
    schema = _schema(case)
    regime, m, ins, oracle_src, oracle_ins = _precisions(case)
    g, node = m.graph, m.graph.node[0]
    node_name = node.name or case.name
    arrays = {vi.name: _array(x) for vi, x in zip(g.input, ins)}
    out_arrays = [_array(x) for x in case.outputs]
    in_pos = dict(zip([vi.name for vi in g.input], _present(node.input)))
    out_pos = _present(node.output)
    float_in = [n for n, a in arrays.items() if a.dtype in _NP_FLOATS and a.size > 0]
    diff_in = [n for n in float_in if not _nondiff(_formal(schema.inputs, in_pos[n]))]
    diff_out = [vi.name for vi, pos, a in zip(g.output, out_pos, out_arrays)
                if vi.type.tensor_type.elem_type in FLOATS and a.size > 0
                and not _nondiff(_formal(schema.outputs, pos))]
    differentiable = bool(diff_in and diff_out)
    trainable = diff_in if differentiable else float_in
    trainable = [n for n in trainable if np.all(np.isfinite(arrays[n]))] or trainable
    if regime == "float32" and any(arrays[n].dtype == np.float16 for n in trainable):
        regime = "float16"
    loss_outputs = diff_out if differentiable else [
        vi.name for vi, a in zip(g.output, out_arrays) if a.size > 0]
    shapes = {vi.name: a.shape for vi, a in zip(g.output, out_arrays)}
    dtype = TensorProto.DOUBLE if regime == "float64" else TensorProto.FLOAT
    model = _with_loss(m, node_name, arrays, [], loss_outputs, shapes, dtype, case.seed)
    _valid(model)
    oracle_arrays = {vi.name: _array(x) for vi, x in zip(oracle_src.graph.input, oracle_ins)}
    oracle_dtype = helper.np_dtype_to_tensor_dtype(
        np.result_type(*[oracle_arrays[n].dtype for n in trainable]))
    oracle = _with_loss(oracle_src, node_name, oracle_arrays, trainable, loss_outputs, shapes,
                        oracle_dtype, case.seed, with_scale=True)
    values = {VALUE + n: oracle_arrays[n] for n in trainable}
    integer_outputs = all(vi.type.tensor_type.elem_type not in FLOATS
                          for vi in g.output if vi.name in loss_outputs)
    return Problem(case, regime, model, oracle, list(values), values, differentiable,
                   integer_outputs, loss_outputs, node_name)


def _precisions(case: OpCase) -> tuple[str, onnx.ModelProto, list[Any], onnx.ModelProto,
                                        list[Any]]:
    """(regime, model and inputs for edgetrain, model and inputs for the oracle)."""
    original = list(case.inputs)
    try:
        onnx.checker.check_model(case.model, full_check=True)
    except Exception as e:
        raise PreparationError("ONNX's checker rejects the case's own model: "
                               + one_line(str(e), 200)) from e
    if not _runs_as_expected(case, case.model, original):
        raise OracleDisagrees("onnx.reference does not reproduce the case's expected outputs")
    try:
        m, ins = _as_double(case, respect_schema=True)
        if any(_array(x).dtype == np.float64 for x in ins) and _runs_as_expected(case, m, ins):
            return "float64", m, ins, m, ins
    except Exception:
        pass
    try:  # the oracle may ignore the schema's types: onnx.reference does not enforce them
        m, ins = _as_double(case, respect_schema=False)
        if _runs_as_expected(case, m, ins, check=False):
            return "float32", case.model, original, m, ins
    except Exception:
        pass
    return "float32", case.model, original, case.model, original


def _runs_as_expected(case: OpCase, m: onnx.ModelProto, ins: Sequence[Any],
                      check: bool = True) -> bool:
    """The model passes the checker and ``onnx.reference`` reproduces the case's outputs
    (to the case's own float32 tolerance)."""
    if check:
        try:
            onnx.checker.check_model(m, full_check=True)
        except Exception:
            return False
    feeds = {vi.name: _array(x) for vi, x in zip(m.graph.input, ins)}
    try:
        with np.errstate(all="ignore"):
            got = ReferenceEvaluator(m, new_ops=ORACLE_OPS).run(None, feeds)
    except Exception:
        return False
    declared = [helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
                for vi in m.graph.output]
    return len(got) == len(case.outputs) and all(
        np.asarray(g).dtype == t and _close(g, _array(w))
        for g, w, t in zip(got, case.outputs, declared))


def _close(got: Any, want: np.ndarray) -> bool:
    got = np.asarray(got)
    if got.shape != want.shape:
        return False
    if want.dtype.kind in "fc" or got.dtype.kind in "fc":
        return bool(np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-3,
                                atol=1e-5, equal_nan=True))
    return bool(np.array_equal(got, want))


def _array(x: Any) -> np.ndarray:
    return numpy_helper.to_array(x) if isinstance(x, TensorProto) else np.asarray(x)


class Undefined(Exception):
    """The case has no derivative to check at its inputs (the loss or every probe is not
    finite or not defined)."""


class PreparationError(Exception):
    """ONNX's own checker or shape inference rejects the prepared case (not edgetrain)."""


def _valid(m: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(m, full_check=True)
        onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    except Exception as e:
        raise PreparationError("ONNX's checker or shape inference rejects the prepared case: "
                               + one_line(str(e), 200)) from e


def _with_loss(m: onnx.ModelProto, node_name: str, arrays: dict[str, np.ndarray],
               as_inputs: Sequence[str], loss_outputs: Sequence[str],
               shapes: dict[str, tuple[int, ...]], dtype: int, seed: int,
               with_scale: bool = False) -> onnx.ModelProto:
    """The case's node(s), ``s = Σ sum(out·R)`` shaped [1]; inputs become initializers except
    ``as_inputs`` (graph inputs, for the finite differences). ``with_scale`` adds ``S``."""
    g = m.graph
    types = {VALUE + vi.name: vi.type.tensor_type.elem_type for vi in g.output}
    nodes = [onnx.NodeProto() for _ in g.node]
    for n, src in zip(nodes, g.node):
        n.CopyFrom(src)
        for field_ in (n.input, n.output):
            field_[:] = [VALUE + v if v else v for v in field_]
    if not nodes[0].name:
        nodes[0].name = node_name
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.array([1], dtype=np.int64), PREFIX + "shape")]
    parts, scale_parts = [], []
    for j, name in enumerate(loss_outputs):
        v = VALUE + name
        if types[v] != dtype:
            v = PREFIX + f"cast{j}"
            nodes.append(helper.make_node("Cast", [VALUE + name], [v], to=dtype))
        r = rng.standard_normal(shapes[name]).astype(np_dtype)
        inits.append(numpy_helper.from_array(np.asarray(r), PREFIX + f"R{j}"))
        nodes.append(helper.make_node("Mul", [v, PREFIX + f"R{j}"], [PREFIX + f"m{j}"]))
        nodes.append(helper.make_node("ReduceSum", [PREFIX + f"m{j}"], [PREFIX + f"p{j}"],
                                      keepdims=0))
        parts.append(PREFIX + f"p{j}")
        if with_scale:
            nodes.append(helper.make_node("Abs", [PREFIX + f"m{j}"], [PREFIX + f"a{j}"]))
            nodes.append(helper.make_node("ReduceSum", [PREFIX + f"a{j}"],
                                          [PREFIX + f"q{j}"], keepdims=0))
            scale_parts.append(PREFIX + f"q{j}")
    nodes.append(helper.make_node("Sum", parts, [PREFIX + "s0"]))
    nodes.append(helper.make_node("Reshape", [PREFIX + "s0", PREFIX + "shape"], [PREFIX + "s"]))
    outputs = [helper.make_tensor_value_info(PREFIX + "s", dtype, [1])]
    if with_scale:
        nodes.append(helper.make_node("Sum", scale_parts, [PREFIX + "S"]))
        outputs.append(helper.make_tensor_value_info(PREFIX + "S", dtype, []))
    inputs = [helper.make_tensor_value_info(VALUE + n, helper.np_dtype_to_tensor_dtype(
        arrays[n].dtype), arrays[n].shape) for n in as_inputs]
    inits += [numpy_helper.from_array(a, VALUE + n) for n, a in arrays.items()
              if n not in as_inputs]
    for t in g.initializer:
        inits.append(onnx.TensorProto())
        inits[-1].CopyFrom(t)
        inits[-1].name = VALUE + t.name
    value_info = []  # the case's declared output types: an exporter records them too
    for vi in g.output:
        value_info.append(onnx.ValueInfoProto())
        value_info[-1].CopyFrom(vi)
        value_info[-1].name = VALUE + vi.name
    graph = helper.make_graph(nodes, g.name or "case", inputs, outputs, initializer=inits,
                              value_info=value_info)
    out = helper.make_model(graph, opset_imports=list(m.opset_import), ir_version=m.ir_version)
    out.functions.extend(m.functions)
    return out


# -- the oracle: finite differences without edgetrain ------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])


class Erf(OpRun):
    """``onnx.reference``'s Erf rounds every result to float32; this one is exact (the class
    name is the op type ``onnx.reference`` replaces)."""

    op_domain = ""

    def _run(self, x: np.ndarray) -> tuple[np.ndarray]:
        return (np.asarray(_erf(x.astype(np.float64)), dtype=x.dtype).reshape(x.shape),)


class Gelu(OpRun):
    op_domain = ""

    def _run(self, x: np.ndarray, approximate: Any = "none") -> tuple[np.ndarray]:
        mode = approximate.decode() if isinstance(approximate, bytes) else approximate
        if mode == "tanh":
            y = 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
        else:
            y = 0.5 * x * (1.0 + _erf(x.astype(np.float64) / math.sqrt(2.0)))
        return (np.asarray(y, dtype=x.dtype).reshape(x.shape),)


class LpNormalization(OpRun):
    """``onnx.reference`` sums ``x``, not ``|x|``, for p = 1 (onnxruntime and the definition of
    the L1 norm take the absolute value); 0 where the norm is 0, as the reference."""

    op_domain = ""

    def _run(self, x: np.ndarray, axis: Any = -1, p: Any = 2) -> tuple[np.ndarray]:
        norm = np.sum(np.abs(x) ** int(p), axis=int(axis), keepdims=True) ** (1.0 / int(p))
        with np.errstate(all="ignore"):
            return (np.where(norm == 0, 0, x / norm).astype(x.dtype),)


class CausalConvWithState(_RefCausalConv):
    """``onnx.reference`` applies the SiLU activation in float32; here in the input's type."""

    op_domain = ""

    def _run(self, x: np.ndarray, w: np.ndarray, bias: Any = None, past: Any = None,
             activation: Any = None) -> tuple[np.ndarray, np.ndarray]:
        out, state = super()._run(x, w, bias, past, activation="none")
        mode = activation.decode() if isinstance(activation, bytes) else activation
        if mode in ("silu", "swish"):
            out = (out / (1.0 + np.exp(-out))).astype(x.dtype)
        return out, state


ORACLE_OPS = [Erf, Gelu, LpNormalization, CausalConvWithState]


@dataclass
class Check:
    """One finite-difference probe: an element (``index``) or a direction (``direction``)."""

    tensor: str
    index: tuple[int, ...] | None
    direction: np.ndarray | None
    h: float
    left: float
    right: float

    @property
    def central(self) -> float:
        return 0.5 * (self.left + self.right)

    @property
    def kink(self) -> bool:
        return abs(self.right - self.left) > 1e-3 * (1.0 + abs(self.central))

    @property
    def flat(self) -> bool:
        return self.left == 0.0 and self.right == 0.0


@dataclass
class Differences:
    s: float
    scale: float                       # S = Σ |out·R|
    checks: list[Check] = field(default_factory=list)
    undefined: int = 0                 # probes where s(x ± h) is not finite


class Oracle:
    """``s`` of a problem in ``onnx.reference`` (float64), at its inputs or perturbed."""

    def __init__(self, p: Problem) -> None:
        self.p = p
        self.ev = ReferenceEvaluator(p.oracle, new_ops=ORACLE_OPS)
        with np.errstate(all="ignore"):
            s_out, scale = self.ev.run([PREFIX + "s", PREFIX + "S"], p.values)
        self.s, self.scale = float(np.asarray(s_out).reshape(-1)[0]), float(scale)
        if not (math.isfinite(self.s) and math.isfinite(self.scale)):
            raise Undefined("the loss is not finite at the case's inputs (inf or NaN in its "
                            "data)")

    def s_at(self, name: str, value: np.ndarray) -> float:
        """s with one input replaced; NaN where it is undefined (outside the op's domain, or
        the step changes an output's shape: Range's limit, OneHot's depth, Unique)."""
        try:
            with np.errstate(all="ignore"):
                out = self.ev.run([PREFIX + "s"], {**self.p.values, name: value})[0]
            return float(np.asarray(out).reshape(-1)[0])
        except Exception:
            return math.nan

    def probes(self) -> Iterator[Check | None]:
        """One-sided differences at each probe (module docstring); None where undefined."""
        rng = np.random.default_rng(self.p.case.seed + 7)
        for name in self.p.trainable:
            base = self.p.values[name]
            for index, direction in _probes(base, rng):
                yield self._probe(name, base, index, direction)

    def smooth_sides(self, name: str, base: np.ndarray, index: tuple[int, ...] | None,
                     direction: np.ndarray | None) -> bool | None:
        """Whether s changes in proportion to the step on either side of the probe (None:
        undefined there)."""
        at = base if direction is not None else base[index]
        h = FD_STEP32 * max(1.0, float(np.abs(at).max()))
        changes = []
        for step in (h, h / 2, -h, -h / 2):
            delta = np.zeros_like(base)
            if direction is not None:
                delta = (direction * step).astype(base.dtype)
            else:
                delta[index] = step
            changes.append(self.s_at(name, base + delta) - self.s)
        if not all(math.isfinite(c) for c in changes):
            return None
        return any(full != 0.0 and 0.3 < half / full < 0.7
                   for full, half in (changes[:2], changes[2:]))

    def at_domain_edge(self) -> bool:
        """Whether some input element has the loss defined on one side only (acosh at 1)."""
        for name in self.p.trainable:
            base = self.p.values[name]
            for index in np.ndindex(base.shape):
                sides = []
                for sign in (1.0, -1.0):
                    moved = base.copy()
                    moved[index] += sign * FD_STEP * max(1.0, abs(float(base[index])))
                    sides.append(math.isfinite(self.s_at(name, moved)))
                if sides[0] != sides[1]:
                    return True
        return False

    def jumps(self, c: Check) -> bool:
        """Whether the loss jumps at the probe: a one-sided difference that doubles when the
        step halves (s moves by the same amount however small the step: the L2 normalization
        of a zero vector), far above the rounding noise."""
        base = self.p.values[c.tensor]
        half = self._probe(c.tensor, base, c.index, c.direction, c.h / 2)
        if half is None:
            return False
        noise = 1e6 * _EPS * self.scale
        return any(abs(q) * c.h > noise and abs(q2) > 1.5 * abs(q)
                   for q, q2 in ((c.left, half.left), (c.right, half.right)))

    def _probe(self, name: str, base: np.ndarray, index: tuple[int, ...] | None,
               direction: np.ndarray | None, step: float | None = None) -> Check | None:
        at = base if direction is not None else base[index]
        if not np.all(np.isfinite(at)):
            return None
        # float64: an absolute step (a relative one at |x| = 1e4 is 1e-2, whose truncation
        # error shows); float32 (an oracle that cannot run in float64): relative.
        if step is None:
            step = FD_STEP if base.dtype == np.float64 else \
                FD_STEP32 * max(1.0, float(np.abs(at).max()))
        delta = np.zeros_like(base)
        if direction is not None:
            delta = (direction * step).astype(base.dtype)
        else:
            delta[index] = step
        with np.errstate(all="ignore"):
            plus, minus = base + delta, base - delta
            moved = delta != 0
            hp = float(np.abs(plus.astype(np.float64) - base)[moved].max())  # steps taken
            hm = float(np.abs(base - minus.astype(np.float64))[moved].max())
        sp, sm = self.s_at(name, plus), self.s_at(name, minus)
        if not (math.isfinite(sp) and math.isfinite(sm) and hp > 0 and hm > 0):
            return None
        return Check(name, index, direction, step, (self.s - sm) / hm, (sp - self.s) / hp)


def finite_differences(p: Problem, oracle: Oracle | None = None) -> Differences:
    """Every probe of ``d s/d w`` (module docstring)."""
    oracle = oracle or Oracle(p)
    d = Differences(oracle.s, oracle.scale)
    for c in oracle.probes():
        if c is None:
            d.undefined += 1
        else:
            d.checks.append(c)
    if not d.checks:
        raise Undefined("no finite-difference probe is defined: every step leaves the op's "
                        "domain or changes an output's shape")
    return d


def moves(oracle: Oracle) -> bool:
    """Whether the loss moves smoothly under any probe (stops at the first that does): a
    refusal of a loss that is flat or only jumps at every probe is a correct one.

    Each side of a probe is stepped by a float32-sized h and by h/2 (the oracle may round
    inside an op): a change that halves with the step is smooth movement (a kink's sides
    too), one that stays the same is a jump, none is flat."""
    defined = False
    for name in oracle.p.trainable:
        base = oracle.p.values[name]
        for index, direction in _probes(base, np.random.default_rng(oracle.p.case.seed + 7)):
            smooth = oracle.smooth_sides(name, base, index, direction)
            if smooth is not None:
                defined = True
                if smooth:
                    return True
    if not defined:
        raise Undefined("no finite-difference probe is defined: every step leaves the op's "
                        "domain or changes an output's shape")
    return False


def _probes(base: np.ndarray, rng: np.random.Generator
            ) -> list[tuple[tuple[int, ...] | None, np.ndarray | None]]:
    if base.size <= FULL:
        return [(idx, None) for idx in np.ndindex(base.shape)]
    sampled, directions = (SAMPLED, DIRECTIONS) if base.size <= HUGE else (HUGE_SAMPLED,
                                                                            HUGE_DIRECTIONS)
    flat = rng.choice(base.size, size=sampled, replace=False)
    out: list[tuple[tuple[int, ...] | None, np.ndarray | None]] = [
        (tuple(int(i) for i in np.unravel_index(k, base.shape)), None) for k in sorted(flat)]
    for _ in range(directions):
        v = rng.standard_normal(base.shape)
        out.append((None, v / np.abs(v).max()))
    return out


# -- edgetrain -------------------------------------------------------------------------------

@dataclass
class Trained:
    """What one edgetrain step revealed: ``d s/d w`` per trainable, and the warnings."""

    grads: dict[str, np.ndarray]
    frozen: list[str]
    s0: float
    loss: float
    warnings: list[str]


def compile_problem(p: Problem) -> tuple[Any, list[str]]:
    """``et.compile`` with the L1 loss and SGD(lr=1) (module docstring), and its warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tm = et.compile(p.model, loss="l1", optimizer=et.optim.SGD(lr=1.0),
                        trainable=list(p.trainable))
    return tm, [one_line(str(w.message)) for w in caught]


def edgetrain_gradient(p: Problem, tm: Any) -> Trained:
    """Load on the reference backend; one step on L1 to s₀ − (1 + |s₀|) reveals d s/d w."""
    m = et.load(tm.proto, backend="reference")
    s0 = np.asarray(m.run("infer")[PREFIX + "s"])
    before = m.parameters()
    y = (s0 - (1.0 + np.abs(s0))).astype(s0.dtype)
    loss = float(np.asarray(m.run("train", y=y)["loss"]))
    after = m.parameters()
    grads, frozen = {}, []
    for name in p.trainable:
        if name in before:
            grads[name] = before[name].astype(np.float64) - after[name].astype(np.float64)
        else:  # compiled but left frozen ("does not affect the loss")
            frozen.append(name)
            grads[name] = np.zeros_like(p.values[name])
    return Trained(grads, frozen, float(s0.reshape(-1)[0]), loss, [])


# -- comparison and classification -----------------------------------------------------------

def tolerance(p: Problem, d: Differences, c: Check, scale: float) -> float:
    """The allowed |g − c| of one probe (one rule for all cases: module docstring)."""
    if p.oracle_precision == "float32":
        return 1e-2 * scale + 1e-4 + 10.0 * _EPS32 * d.scale / c.h
    if p.regime == "float32":
        return 1e-3 * scale + 1e-5 + 1e-6 * d.scale
    if p.regime == "float16":
        return 1e-2 * scale + 1e-4 + 1e-5 * d.scale
    return 1e-5 * scale + 1e-7 + 100.0 * _EPS * d.scale / c.h


def compare(p: Problem, d: Differences, t: Trained) -> list[str]:
    """The mismatches (empty: the gradient is right at every probe)."""
    return [message for _, message in mismatches(p, d, t)]


def mismatches(p: Problem, d: Differences, t: Trained) -> list[tuple[Check, str]]:
    """The probes where edgetrain's gradient differs, each with its message."""
    bad = []
    for c in d.checks:
        g = t.grads[c.tensor]
        if c.direction is not None:
            got = float(np.sum(g * c.direction))
            scale = max(abs(c.central), float(np.sum(np.abs(g * c.direction))))
            where = "a random direction"
        else:
            got = float(g[c.index])
            scale = abs(c.central)
            where = f"index {list(c.index or ())}"
        tol = tolerance(p, d, c, scale)
        lo, hi = (min(c.left, c.right), max(c.left, c.right)) if c.kink else (c.central,) * 2
        if not (lo - tol <= got <= hi + tol):
            want = f"[{lo:.6g}, {hi:.6g}]" if c.kink else f"{c.central:.6g}"
            bad.append((c, f"d s/d {c.tensor} at {where}: edgetrain {got:.6g}, finite "
                           f"differences {want}"))
    return bad


def run_case(case: OpCase) -> Result:
    """Classify one case (see ``conformance._common`` for the statuses)."""
    start = time.perf_counter()
    reason = scope(case)
    if reason is not None:
        return Result(case.name, case.op, "out-of-scope", reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NumPy's overflow chatter inside onnx.reference
        result = _classify(case)
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def _classify(case: OpCase) -> Result:
    try:
        p = build_problem(case)
        oracle = Oracle(p)
    except (OracleDisagrees, PreparationError, Undefined) as e:
        return Result(case.name, case.op, "out-of-scope", one_line(str(e)))
    except Exception as e:  # the case itself, not edgetrain: onnx.reference cannot run it
        return Result(case.name, case.op, "out-of-scope",
                      one_line(f"onnx.reference cannot evaluate the case: {crash_detail(e)}"))
    info: dict[str, Any] = {"regime": p.regime, "oracle": p.oracle_precision,
                            "differentiable": p.differentiable, "trainable": p.trainable}
    try:
        with time_limit(CASE_SECONDS):
            tm, info["warnings"] = compile_problem(p)
    except CaseTimeout as e:
        return Result(case.name, case.op, "crash", f"compile: {e}", info=info)
    except Exception as e:
        return _refusal(case, p, oracle, e, info)
    try:
        with time_limit(CASE_SECONDS):
            t = edgetrain_gradient(p, tm)
    except CaseTimeout as e:
        return Result(case.name, case.op, "crash", f"train step: {e}", info=info)
    except et.NonFiniteError as e:
        if oracle.at_domain_edge():
            return Result(case.name, case.op, "out-of-scope", "an input sits on the edge of "
                          "the op's domain (the loss is undefined on one side of it), where "
                          "the derivative is infinite: edgetrain's guard skips such a step by "
                          "design", info=info)
        return Result(case.name, case.op, "wrong", one_line(
            f"non-finite step where the loss is finite: {e}"), info=info)
    except Exception as e:  # the compiled file does not run: the compiler's bug
        return Result(case.name, case.op, "crash",
                      one_line(f"the compiled model fails to run: {crash_detail(e)}"),
                      info=info)
    try:
        d = finite_differences(p, oracle)
    except Undefined as e:
        return Result(case.name, case.op, "out-of-scope", one_line(str(e)), info=info)
    differ = mismatches(p, d, t)
    jumps = [c for c, _ in differ if oracle.jumps(c)]  # no derivative there: skipped
    info.update(frozen=t.frozen, probes=len(d.checks) - len(jumps),
                undefined=d.undefined + len(jumps), kinks=sum(c.kink for c in d.checks))
    bad = _forward_mismatch(p, d, t) + [m for c, m in differ if not any(c is j for j in jumps)]
    if bad:
        detail = f"{len(bad)} of {len(d.checks) + 2} checks differ; first: {bad[0]}"
        return Result(case.name, case.op, "wrong", one_line(detail), info=info)
    return Result(case.name, case.op, "correct", info=info)


def _refusal(case: OpCase, p: Problem, oracle: Oracle, e: Exception,
             info: dict[str, Any]) -> Result:
    """A compile-time error: a clear refusal (right, or a coverage gap), or a crash."""
    if not is_clear_error(e):
        return Result(case.name, case.op, "crash", crash_detail(e), info=info)
    info["names_op_and_node"] = names_op_and_node(str(e), case.op, p.node_name)
    info["error"] = type(e).__name__
    try:
        nothing = p.integer_outputs or not moves(oracle)
    except Undefined as u:
        return Result(case.name, case.op, "out-of-scope", one_line(str(u)), info=info)
    return Result(case.name, case.op, "refused-correctly" if nothing else "refused",
                  one_line(str(e)), info=info)


def _forward_mismatch(p: Problem, d: Differences, t: Trained) -> list[str]:
    rel = {"float64": 1e-9, "float32": 1e-4}.get(p.regime, 1e-3)
    tol = rel * (1.0 + d.scale)
    bad = []
    if not abs(t.s0 - d.s) <= tol:
        bad.append(f"forward: infer gives s = {t.s0:.10g}, onnx.reference {d.s:.10g}")
    if not abs(t.loss - (1.0 + abs(t.s0))) <= tol:
        bad.append(f"train-step forward: loss {t.loss:.10g}, expected {1 + abs(t.s0):.10g}")
    return bad


# -- selections ------------------------------------------------------------------------------

def case_names() -> list[str]:
    return sorted(collect())


def representatives() -> list[str]:
    """One in-scope case per op (the first by name): the suite's fast tier."""
    seen: dict[str, str] = {}
    for name in case_names():
        c = collect()[name]
        if scope(c) is None and c.op not in seen:
            seen[c.op] = name
    return sorted(seen.values())


@cache
def result(name: str) -> Result:
    """The (memoized) result of one case: tests and the report share one run per process."""
    return run_case(collect()[name])


def run_all(names: Iterable[str] | None = None, progress: bool = False) -> list[Result]:
    names = list(names) if names is not None else case_names()
    out = []
    for i, n in enumerate(names):
        out.append(result(n))
        if progress:
            r = out[-1]
            print(f"[{i + 1}/{len(names)}] {n}: {r.status} ({r.seconds:.1f}s) "
                  f"{r.detail[:120]}", flush=True)
    return out
