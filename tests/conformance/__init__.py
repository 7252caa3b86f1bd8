"""Conformance suites: edgetrain measured against models and tests nobody on the project wrote.

- :mod:`conformance.onnx_ops`: ONNX's own operator test cases (``onnx.backend.test.case``),
  each gradient checked against float64 finite differences;
- :mod:`conformance.zoo`: timm and transformers models (random init, tiny configs), gradients
  checked against ``torch.autograd`` in float64;
- :mod:`conformance.real_files`: ONNX files shipped inside PyPI wheels, compiled and trained.

Each suite runs through edgetrain's public API only (``et.compile``, ``et.load``,
``Model.run``, ``et.from_torch``, ``et.errors``) and returns one :class:`~conformance._common.
Result` per item; ``tools/coverage.py`` turns the results into ``docs/coverage.md``.
"""
