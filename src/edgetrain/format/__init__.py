"""The trainable file format and checkpoints, specified once (see docs/format.md).

Model file: one ONNX ``ModelProto``. Main graph = the ``infer`` signature; weights and optimizer
state are its initializers; each training signature is a ``training_info[i].algorithm`` whose
``update_binding`` maps updated initializers to step outputs; ``metadata_props["edgetrain"]``
is JSON naming the signatures (validated against a strict schema before anything reads it).
Checkpoints are safetensors files whose metadata holds a checksum over canonical bytes, the
model's architecture hash and, with a key, a MAC. Every write is atomic: temp file in the same
folder, fsync, rename.

The format layer reads and writes protobuf and safetensors only: a device that loads, trains
and saves needs nothing of the compiler.
"""

from __future__ import annotations

from ._checkpoint import PARTS as CHECKPOINT_PARTS
from ._checkpoint import fingerprint, load_checkpoint, save_checkpoint
from ._constants import (
    CHECKPOINT_KIND,
    FORMAT_VERSION,
    META_KEY,
    STEP_NAME,
    committed,
    producer_version,
)
from ._files import (
    atomic_write,
    graph_reads,
    initial_state,
    load_model,
    plain_inference,
    read_model_bytes,
    save_model,
    standalone,
    with_state,
)
from ._integrity import Identity, identify
from ._meta import check, default_opset, read_meta, tensor_spec, write_meta
from ._validate import validate, validate_meta

__all__ = [
    "CHECKPOINT_KIND", "CHECKPOINT_PARTS", "FORMAT_VERSION", "META_KEY", "STEP_NAME",
    "Identity", "atomic_write", "check", "committed", "default_opset", "fingerprint",
    "graph_reads", "identify", "initial_state",
    "load_checkpoint", "load_model", "plain_inference", "producer_version", "read_meta",
    "read_model_bytes", "save_checkpoint", "save_model", "standalone", "tensor_spec",
    "validate", "validate_meta", "with_state", "write_meta",
]
