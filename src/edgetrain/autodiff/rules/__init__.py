"""Gradient rules, grouped by op family; importing this package registers them all."""

from . import conv, elementwise, matmul, nn, norm, pool, reduce, shape, transformer, vision  # noqa: F401
