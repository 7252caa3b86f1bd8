"""Gradient rules, grouped by op family; importing this package registers them all."""

from . import (  # noqa: F401
    activation,
    attention,
    control,
    conv,
    elementwise,
    indexing,
    linear,
    matmul,
    nn,
    norm,
    pool,
    recurrent,
    reduce,
    shape,
    transformer,
    trig,
    vision,
)
