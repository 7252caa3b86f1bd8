"""Front-ends: build the ONNX inference model from another framework, then compile it."""

from ._keras import from_keras, keras_to_onnx
from ._torch import from_torch, torch_to_onnx

__all__ = ["from_keras", "from_torch", "keras_to_onnx", "torch_to_onnx"]
