"""PyTorch front-end through ``torch.onnx.export`` (torch is an optional extra)."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import onnx

from ..errors import EdgetrainError


def torch_to_onnx(module: Any, example_inputs: Any, input_names: list[str] | None = None,
                  output_names: list[str] | None = None, opset: int = 18,
                  dynamic_batch: bool = True) -> onnx.ModelProto:
    """Export ``module`` (in eval mode) to an ONNX inference model with a dynamic batch dim."""
    try:
        import torch
    except ImportError as e:
        raise EdgetrainError("from_torch needs PyTorch: pip install 'edgetrain[torch]'") from e
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    names = input_names or (["x"] if len(args) == 1 else [f"x{i}" for i in range(len(args))])
    outs = output_names or ["logits"]
    was_training = module.training
    module.eval()
    buf = io.BytesIO()
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
        raise EdgetrainError(f"torch.onnx.export failed: {e}") from e
    finally:
        module.train(was_training)
    from ..compiler._fold import fold_constants

    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    model = _untie_initializers(onnx.load_from_string(buf.getvalue()), set(state))
    _restore_parameter_names(model, state)
    # Static shapes through exported shape arithmetic (e.g. F.pad's pads): conv/pool
    # gradients need the spatial sizes.
    return fold_constants(model)


def _restore_parameter_names(model: onnx.ModelProto, state: dict[str, Any]) -> None:
    """Name reshaped copies of parameters after them (e.g. a PReLU slope exported as
    ``onnx::PRelu_89`` [C, 1, 1]) when exactly one absent parameter has the same values
    (and they are not all equal: a constant fill could match by accident)."""
    from onnx import numpy_helper

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
    from onnx import numpy_helper

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


def from_torch(module: Any, example_inputs: Any, input_names: list[str] | None = None,
               output_names: list[str] | None = None, **compile_kwargs: Any) -> Any:
    """Export a ``torch.nn.Module`` to ONNX and compile it (``compile_kwargs`` as ``compile``)."""
    from .._api import compile as _compile

    proto = torch_to_onnx(module, example_inputs, input_names, output_names)
    return _compile(proto, **compile_kwargs)
