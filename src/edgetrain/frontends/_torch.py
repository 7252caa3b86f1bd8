"""PyTorch front-end through ``torch.onnx.export`` (torch is an optional extra).

The export is of the module in eval mode (batch norm on running statistics) with its
``nn.Dropout`` modules kept: they are exported switched off in the inference graph, and the
train step switches them on, as ``module.train()`` would. Functional dropout
(``F.dropout(x, training=self.training)``, transformers' attention dropout) follows its
module's eval mode and is not in the file. Then the file is made to say what the module
says about its tensors:

* tied parameters (GPT-2's embedding and LM head) are one initializer again, read through a
  Transpose or Reshape where the exporter stored a transposed or reshaped copy, so the two
  uses cannot drift apart after the first step;
* ``from_torch`` trains, by default, the parameters with ``requires_grad`` (not buffers,
  not frozen parameters such as Whisper's sinusoidal ``embed_positions``, not constants the
  exporter made);
* each output's first dim is left for shape inference to name (the batch, or a flattened
  ``[B·(T−1), V]`` of its own), so labels follow the output they are for.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import EdgetrainError

#: Export failures whose cause is known, and what to do about each.
_HINTS = (
    (("scaled_dot_product_attention", "enable_gqa", "sdpa"),
     'load the transformers model with attn_implementation="eager" (or set '
     'model.config._attn_implementation = "eager") and export again'),
    (("flash_attention", "flex_attention"),
     'load the transformers model with attn_implementation="eager" and export again'),
)


def _export_error(e: Exception) -> EdgetrainError:
    text = " ".join(str(e).split())
    low = text.lower()
    hint = next((h for keys, h in _HINTS if any(k in low for k in keys)), None)
    if hint is None:
        hint = ("simplify the module's forward (no data-dependent Python control flow), or "
                "export it yourself with torch.onnx.export and compile the file")
    return EdgetrainError(f"torch.onnx.export failed: {text[:600]}; {hint}")


def _export(module: Any, args: tuple[Any, ...], names: list[str], outs: list[str],
            opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    import torch

    buf = io.BytesIO()
    modes = {m: m.training for m in module.modules()}
    module.eval()
    for m in module.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.train()  # exported as a Dropout node (switched off below)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # PRESERVE (with the module in eval mode) keeps BatchNormalization nodes instead of
            # folding them into the preceding Conv, so compile(batch_norm=...) can choose.
            torch.onnx.export(  # the stubs say path, but a BytesIO is a valid target
                module, args, buf,  # type: ignore[arg-type]
                input_names=names, output_names=outs, opset_version=opset,
                dynamo=False, do_constant_folding=True,
                training=torch.onnx.TrainingMode.PRESERVE,
                dynamic_axes={n: {0: "batch"} for n in names + outs} if dynamic_batch else None)
    except Exception as e:
        raise _export_error(e) from e
    finally:
        for m, training in modes.items():
            m.training = training
    return onnx.load_from_string(buf.getvalue())


def torch_to_onnx(module: Any, example_inputs: Any, input_names: list[str] | None = None,
                  output_names: list[str] | None = None, opset: int = 18,
                  dynamic_batch: bool = True) -> onnx.ModelProto:
    """Export ``module`` (in eval mode) to an ONNX inference model with a dynamic batch dim."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise EdgetrainError("from_torch needs PyTorch: pip install 'edgetrain[torch]'") from e
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    names = input_names or (["x"] if len(args) == 1 else [f"x{i}" for i in range(len(args))])
    outs = output_names or ["logits"]
    model = _export(module, args, names, outs, opset, dynamic_batch)
    from ..compiler._fold import fold_constants

    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    model = _untie_initializers(model, set(state))
    _restore_parameter_names(model, state)
    _tie_shared_parameters(model, module)
    _dropout_off(model)
    if dynamic_batch:
        _unname_output_dims(model)
    # Static shapes through exported shape arithmetic (e.g. F.pad's pads): pool gradients
    # need the spatial sizes, conv gradients take their faster form with them.
    return fold_constants(model)


def _dropout_off(model: onnx.ModelProto) -> None:
    """Dropout nodes without their training-mode input: off at inference (the train step
    of the compiled file switches them on)."""
    for node in model.graph.node:
        if node.op_type == "Dropout" and len(node.input) > 2:
            del node.input[2:]


def _unname_output_dims(model: onnx.ModelProto) -> None:
    """Output dim 0 unnamed: shape inference names it from the graph (module docstring)."""
    for o in model.graph.output:
        tt = o.type.tensor_type
        if tt.HasField("shape") and len(tt.shape.dim) and tt.shape.dim[0].dim_param:
            tt.shape.dim[0].ClearField("dim_param")


def _restore_parameter_names(model: onnx.ModelProto, state: dict[str, Any]) -> None:
    """Name reshaped copies of parameters after them (e.g. a PReLU slope exported as
    ``onnx::PRelu_89`` [C, 1, 1]) when exactly one absent parameter has the same values
    (and they are not all equal: a constant fill could match by accident)."""
    names = {t.name for t in model.graph.initializer}
    absent = {k: v for k, v in state.items() if k not in names and v.dtype.kind == "f"}
    renamed: dict[str, str] = {}
    for i, t in enumerate(model.graph.initializer):
        if t.name in state or not t.name.startswith("onnx::"):
            continue
        arr = numpy_helper.to_array(t)
        if arr.size < 2 or not np.ptp(arr) > 0:  # constant fills match too easily
            continue
        hits = [k for k, v in absent.items()
                if v.size == arr.size and v.dtype == arr.dtype and np.array_equal(
                    v.reshape(-1), arr.reshape(-1))]
        if len(hits) == 1 and hits[0] not in renamed.values():
            renamed[t.name] = hits[0]
            model.graph.initializer[i].name = hits[0]
    _rename_inputs(model, renamed)


def _rename_inputs(model: onnx.ModelProto, renamed: dict[str, str]) -> None:
    for node in model.graph.node:
        for j, x in enumerate(node.input):
            if x in renamed:
                node.input[j] = renamed[x]


def _untie_initializers(model: onnx.ModelProto, state_names: set[str]) -> onnx.ModelProto:
    """Give every parameter and buffer its own initializer again.

    The exporter merges initializers with equal values (e.g. a fresh BatchNorm's weight and
    running_var, both ones) and reads the duplicates through Identity nodes; training one of
    them would then silently change the other. Each such Identity becomes a copy.
    """
    inits = {t.name: t for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if (node.op_type == "Identity" and node.input[0] in inits
                and node.output[0] in state_names and node.output[0] not in inits):
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]),
                                           node.output[0])
            model.graph.initializer.append(copy)
            inits[copy.name] = copy
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _parameter_groups(module: Any) -> tuple[list[list[str]], dict[str, np.ndarray]]:
    """Names of parameters that are one tensor (tied), and every parameter's value."""
    by_id: dict[int, list[str]] = {}
    values: dict[str, np.ndarray] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
        values[name] = p.detach().cpu().numpy()
    return [g for g in by_id.values() if len(g) > 1], values


def _copies(model: onnx.ModelProto, value: np.ndarray) -> list[tuple[str, str]]:
    """(initializer, how it stores ``value``: "same", "transposed" or "reshaped")."""
    out = []
    for t in model.graph.initializer:
        if int(np.prod(t.dims)) != value.size or not t.data_type:
            continue
        arr = numpy_helper.to_array(t)
        if arr.shape == value.shape and np.array_equal(arr, value):
            out.append((t.name, "same"))
        elif value.ndim == 2 and arr.shape == value.T.shape and np.array_equal(arr, value.T):
            out.append((t.name, "transposed"))
        elif np.array_equal(arr.reshape(-1), value.reshape(-1)):
            out.append((t.name, "reshaped"))
    return out


def _tie_shared_parameters(model: onnx.ModelProto, module: Any) -> None:
    """Tied parameters become one initializer (module docstring)."""
    groups, values = _parameter_groups(module)
    for names in groups:
        value = values[names[0]]
        if value.size < 2 or not np.ptp(value) > 0:
            continue
        copies = _copies(model, value)
        keep = next((n for n, how in copies if how == "same" and n in names),
                    next((n for n, how in copies if how == "same"), None))
        if keep is None or len(copies) < 2:
            continue
        _read_through(model, keep, [(n, how) for n, how in copies if n != keep])


def _read_through(model: onnx.ModelProto, keep: str, copies: list[tuple[str, str]]) -> None:
    """Replace each copy by a node that computes it from ``keep``."""
    g = model.graph
    dims = {t.name: list(t.dims) for t in g.initializer}
    drop = {n for n, _ in copies}
    made = []
    for name, how in copies:
        if how == "same":
            made.append(helper.make_node("Identity", [keep], [name], name=f"{name}_tied"))
        elif how == "transposed":
            made.append(helper.make_node("Transpose", [keep], [name], name=f"{name}_tied",
                                         perm=[1, 0]))
        else:
            shape = f"{name}_tied_shape"
            made.append(helper.make_node("Constant", [], [shape], name=shape,
                                         value=numpy_helper.from_array(
                                             np.array(dims[name], dtype=np.int64), shape)))
            made.append(helper.make_node("Reshape", [keep, shape], [name], name=f"{name}_tied"))
    keep_inits = [t for t in g.initializer if t.name not in drop]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    nodes = made + list(g.node)
    del g.node[:]
    g.node.extend(nodes)


def trainable_parameters(model: onnx.ModelProto, module: Any) -> list[str]:
    """Initializers that hold a parameter with ``requires_grad`` (by name, else by value:
    the exporter stores some transposed or reshaped under its own names)."""
    params = {k: (p.detach().cpu().numpy(), bool(p.requires_grad))
              for k, p in module.named_parameters(remove_duplicate=False)}
    buffers = {k for k, _ in module.named_buffers()}
    out = []
    for t in model.graph.initializer:
        if t.name in params:
            if params[t.name][1]:
                out.append(t.name)
            continue
        if t.name in buffers or t.data_type not in (onnx.TensorProto.FLOAT,
                                                    onnx.TensorProto.DOUBLE):
            continue
        arr = numpy_helper.to_array(t)
        for value, grad in params.values():
            if value.size == arr.size and value.size > 1 and np.ptp(value) > 0 and (
                    np.array_equal(value.reshape(-1), arr.reshape(-1)) or (
                        value.ndim == 2 and arr.shape == value.T.shape
                        and np.array_equal(arr, value.T))):
                if grad:
                    out.append(t.name)
                break
    return out


def from_torch(module: Any, example_inputs: Any, input_names: list[str] | None = None,
               output_names: list[str] | None = None, **compile_kwargs: Any) -> Any:
    """Export a ``torch.nn.Module`` to ONNX and compile it (``compile_kwargs`` as ``compile``).

    By default the parameters with ``requires_grad`` train (``trainable=`` overrides it).
    """
    from .._api import compile as _compile
    from ..select import Selector

    proto = torch_to_onnx(module, example_inputs, input_names, output_names)
    if compile_kwargs.get("trainable") is None:
        chosen = trainable_parameters(proto, module)
        if chosen:
            compile_kwargs["trainable"] = Selector(
                "requires_grad()", lambda g: [n for n in chosen if n in g.initializers])
    return _compile(proto, **compile_kwargs)
