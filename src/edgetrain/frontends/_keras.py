"""Keras front-end (TensorFlow backend) through tf2onnx; the optional extra ``keras``.

Exporters for inference fold what they can: tf2onnx folds batch norm into the convolution,
drops zero biases and merges equal constants. A trainable model needs the opposite — every
Keras variable as its own initializer under its own name. So the exported function takes the
variables as *inputs* (Keras 3's ``stateless_call``): nothing about them is constant at
conversion time, nothing gets folded. The variable inputs then become initializers holding the
current values, named by the variables' paths (``dense/kernel``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import EdgetrainError


def _imports() -> tuple[Any, Any, Any]:
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as e:
        raise EdgetrainError("from_keras needs TensorFlow and tf2onnx: "
                             "pip install 'edgetrain[keras]'") from e
    import keras

    if keras.backend.backend() != "tensorflow":
        raise EdgetrainError(f"from_keras converts Keras models on the TensorFlow backend; "
                             f"this Keras runs on {keras.backend.backend()!r}")
    return tf, tf2onnx, keras


def keras_to_onnx(model: Any, input_names: Sequence[str] | None = None,
                  output_names: Sequence[str] | None = None, opset: int = 18
                  ) -> tuple[onnx.ModelProto, list[str]]:
    """Export a built Keras 3 model (inference mode) to ONNX, one initializer per variable.

    Returns the model and the paths of the variables Keras marks trainable (the default
    selection of ``from_keras``: a Keras model with a frozen base trains only its head).
    """
    tf, tf2onnx, _ = _imports()
    if not getattr(model, "built", False) or not getattr(model, "inputs", None):
        raise EdgetrainError("from_keras needs a built functional or sequential model with "
                             "defined inputs (give it a keras.Input)")
    tv, ntv = list(model.trainable_variables), list(model.non_trainable_variables)
    variables = tv + ntv
    paths = [v.path for v in variables]
    if len(set(paths)) != len(paths):
        raise EdgetrainError("from_keras: several variables share one path")
    n_in = len(model.inputs)
    names = list(input_names) if input_names else (["x"] if n_in == 1 else
                                                   [f"x{i}" for i in range(n_in)])
    spec = [tf.TensorSpec(t.shape, t.dtype, name=names[i]) for i, t in enumerate(model.inputs)]
    wspec = [tf.TensorSpec(v.shape, v.dtype, name=f"edgetrain_w{i}")
             for i, v in enumerate(variables)]

    def infer(*args: Any) -> Any:
        xs, ws = args[:n_in], args[n_in:]
        y, _ = model.stateless_call(list(ws[:len(tv)]), list(ws[len(tv):]),
                                    list(xs) if n_in > 1 else xs[0], training=False)
        return y

    fn = tf.function(infer, input_signature=spec + wspec, autograph=False)
    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec + wspec, opset=opset)
    except Exception as e:
        raise EdgetrainError(f"tf2onnx could not convert the Keras model: {e}") from e

    g = proto.graph
    rename = {f"edgetrain_w{i}": p for i, p in enumerate(paths)}
    kept_inputs = [i for i in g.input if i.name not in rename]
    del g.input[:]
    g.input.extend(kept_inputs)
    for node in g.node:
        for j, x in enumerate(node.input):
            if x in rename:
                node.input[j] = rename[x]
    used = {x for n in g.node for x in n.input}
    for v, p in zip(variables, paths, strict=True):
        if p in used:
            g.initializer.append(numpy_helper.from_array(np.asarray(v.numpy()), p))
    outs = list(output_names) if output_names else (
        ["logits"] if len(g.output) == 1 else [f"output{i}" for i in range(len(g.output))])
    _rename_outputs(proto, outs)
    _name_batch_dims(proto)
    return proto, [v.path for v in tv if v.path in used]


def _name_batch_dims(proto: onnx.ModelProto) -> None:
    """Call the first dim of every input and output ``batch``, as ``from_torch`` does.

    tf2onnx names Keras' unknown batch dims ``unk__626`` and the like, a fresh name per value,
    which then shows in signatures and error messages; one shared name also tells a runtime
    that the inputs, the outputs and the labels share the batch size.
    """
    g = proto.graph
    rename = {}
    for vi in [*g.input, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].dim_param.startswith("unk__"):
            rename[dims[0].dim_param] = "batch"
    for vi in [*g.input, *g.output, *g.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def _rename_outputs(proto: onnx.ModelProto, names: Sequence[str]) -> None:
    for out, new in zip(list(proto.graph.output), names, strict=True):
        old = out.name
        for node in proto.graph.node:
            for j, x in enumerate(node.output):
                if x == old:
                    node.output[j] = new
            for j, x in enumerate(node.input):
                if x == old:
                    node.input[j] = new
        out.name = new


def from_keras(model: Any, input_names: Sequence[str] | None = None,
               output_names: Sequence[str] | None = None, **compile_kwargs: Any) -> Any:
    """Convert a Keras model (TensorFlow backend) and compile it.

    ``trainable`` defaults to the variables Keras marks trainable. Keras' batch norm becomes
    plain arithmetic (no BatchNormalization node), so it always uses its moving statistics.
    """
    from .._api import compile as _compile

    proto, trainable = keras_to_onnx(model, input_names, output_names)
    compile_kwargs.setdefault("trainable", trainable)
    return _compile(proto, **compile_kwargs)
