"""Gradient rules, grouped by op family; importing this package registers them all."""

from . import (  # noqa: F401
    control,
    conv,
    elementwise,
    matmul,
    nn,
    norm,
    pool,
    recurrent,
    reduce,
    shape,
    transformer,
    vision,
)
