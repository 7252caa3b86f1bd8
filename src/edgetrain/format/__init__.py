"""The trainable file format and checkpoints, specified once (see docs/format.md).

Model file: one ONNX ``ModelProto``. Main graph = the ``infer`` signature; weights and optimizer
state are its initializers; each training signature is a ``training_info[i].algorithm`` whose
``update_binding`` maps updated initializers to step outputs; ``metadata_props["edgetrain"]``
is JSON naming the signatures, specified once by :class:`Metadata` and validated in full before
anything reads it (:func:`metadata_schema` is its JSON Schema, shipped as ``schema.json``).
Checkpoints are safetensors files whose metadata holds a checksum over canonical bytes, the
model's architecture hash and, with a key, a MAC. Every write is atomic: temp file in the same
folder, fsync, rename.

The format layer reads and writes protobuf and safetensors only: a device that loads, trains
and saves needs nothing of the compiler.
"""

from __future__ import annotations

import os

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
    store_training_state,
    stored_tensors,
    with_state,
    without_state_values,
)
from ._integrity import Identity, identify
from ._meta import check, default_opset, read_meta, read_metadata, write_meta
from ._spec import (
    FeatureSpec,
    LoraAdapter,
    LoraSite,
    LossConfig,
    Metadata,
    OptimizerConfig,
    SignatureSpec,
    TensorSpec,
    metadata_schema,
)
from ._validate import validate, validate_meta

#: The JSON Schema of the metadata as shipped, for drivers in other languages (the same
#: document :func:`metadata_schema` returns).
SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "schema.json")

__all__ = [
    "CHECKPOINT_KIND", "CHECKPOINT_PARTS", "FORMAT_VERSION", "META_KEY", "SCHEMA_PATH",
    "STEP_NAME", "FeatureSpec", "Identity", "LoraAdapter", "LoraSite", "LossConfig", "Metadata",
    "OptimizerConfig", "SignatureSpec", "TensorSpec", "atomic_write", "check", "committed",
    "default_opset", "fingerprint", "graph_reads", "identify", "initial_state",
    "load_checkpoint", "load_model", "metadata_schema", "plain_inference", "producer_version",
    "read_meta", "read_metadata", "read_model_bytes", "save_checkpoint", "save_model",
    "standalone", "store_training_state", "stored_tensors",
    "validate", "validate_meta", "with_state", "without_state_values", "write_meta",
]
