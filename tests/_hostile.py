"""Hostile model files for the security tests: tensors that point at other files.

Every builder takes a compiled trainable file and returns a copy in which some tensor -- a
``Constant``'s ``value`` or ``sparse_value``, a sparse initializer, a constant inside an ``If``,
``Loop`` or ``Scan`` body, or one in a training graph -- stores its bytes as *external data*
at ``location``. Where the runtime would read that file, the bytes are routed to an output
unchanged (``logits = pre * 0 + leak``), so a test sees the secret if it ever gets through.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: 40 bytes = ten float32 values, the width of the MLP's logits.
SECRET = b"CANARY-edgetrain-secret-0123456789ABCDEF"
assert len(SECRET) == 40


def external_tensor(name: str, location: str, n: int = 10) -> TensorProto:
    """A float32 [n] tensor whose bytes live in the file ``location``."""
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.FLOAT
    t.dims.extend([n])
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    t.external_data.add(key="offset", value="0")
    t.external_data.add(key="length", value=str(4 * n))
    return t


def sparse_external(name: str, location: str) -> onnx.SparseTensorProto:
    """A sparse [10] tensor with all ten values stored externally."""
    idx = numpy_helper.from_array(np.arange(10, dtype=np.int64), f"{name}.indices")
    return helper.make_sparse_tensor(external_tensor(name, location), idx, [10])


def _const(out: str, location: str, sparse: bool, name: str) -> onnx.NodeProto:
    if sparse:
        return helper.make_node("Constant", [], [out], name=name,
                                sparse_value=sparse_external(f"{name}.t", location))
    return helper.make_node("Constant", [], [out], name=name,
                            value=external_tensor(f"{name}.t", location))


def _zeros(out: str, name: str) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [out], name=name,
                            value=numpy_helper.from_array(np.zeros(10, np.float32), f"{name}.t"))


def _route(model: onnx.ModelProto, nodes: list[onnx.NodeProto], leak: str = "leak") -> None:
    """Make the main graph's ``logits`` equal ``leak`` (computed by ``nodes``), exactly."""
    g = model.graph
    for n in g.node:
        for k, o in enumerate(n.output):
            if o == "logits":
                n.output[k] = "pre"
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    g.node.extend(nodes + [
        helper.make_node("Constant", [], ["zero"], name="zero", value=zero),
        helper.make_node("Mul", ["pre", "zero"], ["pre0"], name="pre0"),
        helper.make_node("Add", ["pre0", leak], ["logits"], name="route")])


def _branch(nodes: list[onnx.NodeProto], name: str, out: str = "b_out") -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [],
                             [helper.make_tensor_value_info(out, TensorProto.FLOAT, [10])])


def _if(location: str, sparse: bool, depth: int = 1) -> list[onnx.NodeProto]:
    """``leak = If(true) then <constant from location> else zeros``, nested ``depth`` deep."""
    nodes: list[onnx.NodeProto] = [_const("b_out", location, sparse, "secret")]
    for level in range(depth):
        cond = f"cond{level}"
        nodes = [helper.make_node("Constant", [], [cond], name=cond,
                                  value=numpy_helper.from_array(np.array(True), cond)),
                 helper.make_node("If", [cond], ["b_out"], name=f"if{level}",
                                  then_branch=_branch(nodes, f"then{level}"),
                                  else_branch=_branch([_zeros("b_out", f"zeros{level}")],
                                                      f"else{level}"))]
    nodes[-1].output[0] = "leak"
    return nodes


def _loop(location: str, sparse: bool) -> list[onnx.NodeProto]:
    """``leak`` = the loop-carried value after one iteration whose body is the constant."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"], name="keep"),
         _const("v_out", location, sparse, "secret_loop")],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [10])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [10])])
    consts = {"trip": np.array(1, np.int64), "go": np.array(True), "v0": np.zeros(10, np.float32)}
    nodes = [helper.make_node("Constant", [], [k], name=k, value=numpy_helper.from_array(v, k))
             for k, v in consts.items()]
    return nodes + [helper.make_node("Loop", ["trip", "go", "v0"], ["leak"], name="loop",
                                     body=body)]


def _scan(location: str, sparse: bool) -> list[onnx.NodeProto]:
    """``leak`` = the final state of a one-step Scan whose body emits the constant."""
    body = helper.make_graph(
        [_const("s_out", location, sparse, "secret_scan"),
         helper.make_node("Identity", ["xi"], ["yi"], name="pass")],
        "scan_body", [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [10]),
                      helper.make_tensor_value_info("xi", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [10]),
         helper.make_tensor_value_info("yi", TensorProto.FLOAT, [1])])
    consts = {"s0": np.zeros(10, np.float32), "seq": np.zeros((1, 1), np.float32)}
    nodes = [helper.make_node("Constant", [], [k], name=k, value=numpy_helper.from_array(v, k))
             for k, v in consts.items()]
    return nodes + [helper.make_node("Scan", ["s0", "seq"], ["leak", "ys"], name="scan",
                                     body=body, num_scan_inputs=1)]


def _in_train_graph(model: onnx.ModelProto, location: str, sparse: bool) -> None:
    """The train step writes the constant into ``dense2.bias`` (read back by parameters())."""
    g = model.training_info[0].algorithm
    target = "dense2.bias.new"
    for n in g.node:
        for k, o in enumerate(n.output):
            if o == target:
                n.output[k] = "pre_bias"
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero_t")
    g.node.extend([
        _const("leak_t", location, sparse, "secret_train"),
        helper.make_node("Constant", [], ["zero_t"], name="zero_t", value=zero),
        helper.make_node("Mul", ["pre_bias", "zero_t"], ["pre_bias0"], name="pb0"),
        helper.make_node("Add", ["pre_bias0", "leak_t"], [target], name="route_t")])


def _in_init_graph(model: onnx.ModelProto, location: str, sparse: bool) -> None:
    ti = model.training_info[0]
    ti.initialization.CopyFrom(helper.make_graph(
        [_const("init_out", location, sparse, "secret_init")], "init", [],
        [helper.make_tensor_value_info("init_out", TensorProto.FLOAT, [10])]))


def _sparse_initializer(model: onnx.ModelProto, location: str) -> None:
    model.graph.sparse_initializer.append(sparse_external("leak", location))
    _route(model, [])


def _function(model: onnx.ModelProto, location: str, sparse: bool) -> None:
    """A model-local function whose body holds the constant, called from the main graph."""
    fn = helper.make_function("evil.domain", "Leak", [], ["y"],
                              [_const("y", location, sparse, "secret_fn")],
                              [helper.make_opsetid("", 18)])
    model.functions.append(fn)
    model.opset_import.append(helper.make_opsetid("evil.domain", 1))
    _route(model, [helper.make_node("Leak", [], ["leak"], name="call", domain="evil.domain")])


#: name -> edit(model, location) applied in place; each reads ``location`` if allowed to.
VARIANTS: dict[str, Callable[[onnx.ModelProto, str], None]] = {
    "constant_sparse_value": lambda m, loc: _route(m, [_const("leak", loc, True, "secret")]),
    "constant_value": lambda m, loc: _route(m, [_const("leak", loc, False, "secret")]),
    "if_branch_value": lambda m, loc: _route(m, _if(loc, sparse=False)),
    "if_branch_sparse": lambda m, loc: _route(m, _if(loc, sparse=True)),
    "nested_if_sparse": lambda m, loc: _route(m, _if(loc, sparse=True, depth=3)),
    "loop_body_value": lambda m, loc: _route(m, _loop(loc, sparse=False)),
    "loop_body_sparse": lambda m, loc: _route(m, _loop(loc, sparse=True)),
    "scan_body_sparse": lambda m, loc: _route(m, _scan(loc, sparse=True)),
    "sparse_initializer": _sparse_initializer,
    "train_graph_sparse": lambda m, loc: _in_train_graph(m, loc, sparse=True),
    "train_graph_value": lambda m, loc: _in_train_graph(m, loc, sparse=False),
    "init_graph_sparse": lambda m, loc: _in_init_graph(m, loc, sparse=True),
    "function_body": lambda m, loc: _function(m, loc, sparse=False),
}


def hostile(model: onnx.ModelProto, variant: str, location: str) -> onnx.ModelProto:
    """A copy of ``model`` with the ``variant`` edit pointing at ``location``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    VARIANTS[variant](out, location)
    return out
