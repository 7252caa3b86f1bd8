"""Optimizers compiled into the training step, with the update formulas of ``torch.optim``.

The learning rate is a graph input (the runtime feeds the configured default, a caller may
override it per step); optimizer state lives in the file as initializers and in checkpoints.
Adam's bias corrections 1 − βᵗ are computed once per step and shared by every parameter. A
float64 model computes them in float64, as torch does in Python doubles. A float32 model
computes them in float32 without cancellation (see :func:`_bias_corrections`): runtimes that
lower float64 to float32 (IREE by default, OpenVINO's CPU plugin, GPUs without doubles) would
otherwise lose ~1e-4 of their relative precision in the first steps, and with it parity.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from ._ir import Builder, Value
from .errors import EdgetrainError


@dataclass
class Optimizer:
    """Base class. ``clip_norm`` clips the global gradient norm (torch ``clip_grad_norm_``)."""

    lr: float = 0.01
    clip_norm: float | None = None
    name: ClassVar[str] = "optimizer"

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse hyper-parameters no training run can use (checked again at compile time,
        since the fields may have changed since construction)."""
        _number("learning rate", self.lr, low=0.0, low_open=True)
        if self.clip_norm is not None:
            _number("clip_norm", self.clip_norm, low=0.0, low_open=True)

    def slots(self) -> list[str]:
        """Names of the per-parameter state tensors (same shape as the parameter)."""
        return []

    def update(self, op: Builder, p: Value, g: Value, state: dict[str, Value], lr: Value,
               step: Value) -> tuple[Value, dict[str, Value]]:
        """New parameter and new state; ``step`` is the float64 step number, 1-based.

        ``g`` is the gradient as the backward pass delivers it: already multiplied by ``lr``
        when :meth:`backward_seed` seeded the backward with the rate.
        """
        raise NotImplementedError

    @property
    def linear_in_lr(self) -> bool:
        """True when the update is ``p - lr * g`` exactly (plain SGD)."""
        return False

    def backward_seed(self, op: Builder, lr: Value) -> Value:
        """d(objective)/d(loss) to start the backward pass with: 1, or ``lr`` for plain SGD.

        Seeding with ``lr`` makes every gradient arrive already scaled, and a weight gradient
        computed by a GEMM can then take the update ``p - g`` into that same GEMM (``C = p``,
        ``beta = 1``, ``alpha = -1``; the compiler's Gemm-update fusion): no separate passes
        over the weights to scale, subtract and write them.
        """
        return lr if self.linear_in_lr else op.scalar(1.0, lr)

    def config(self) -> dict[str, Any]:
        d = asdict(self)
        d["name"] = self.name
        return d


@dataclass
class SGD(Optimizer):
    """SGD with momentum, dampening, Nesterov and L2 weight decay (``torch.optim.SGD``)."""

    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    name: ClassVar[str] = "sgd"

    def check(self) -> None:
        super().check()
        _number("momentum", self.momentum, low=0.0)
        _number("dampening", self.dampening, low=0.0, high=1.0)
        _number("weight_decay", self.weight_decay, low=0.0)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise EdgetrainError("Nesterov momentum requires a momentum and zero dampening")

    def slots(self) -> list[str]:
        return ["momentum_buffer"] if self.momentum else []

    @property
    def linear_in_lr(self) -> bool:
        return not (self.momentum or self.weight_decay or self.clip_norm is not None)

    def update(self, op: Builder, p: Value, g: Value, state: dict[str, Value], lr: Value,
               step: Value) -> tuple[Value, dict[str, Value]]:
        if self.linear_in_lr:  # the backward was seeded with lr: g is lr·∇
            return op.Sub(p, g), {}
        if self.weight_decay:
            g = op.Add(g, op.Mul(p, self.weight_decay))
        new_state: dict[str, Value] = {}
        if self.momentum:
            buf = op.Add(op.Mul(state["momentum_buffer"], self.momentum),
                         op.Mul(g, 1.0 - self.dampening) if self.dampening else g)
            if self.dampening:
                # torch starts the buffer at the raw gradient on the first step.
                buf = op.Where(op.Equal(step, 1.0), g, buf)
            new_state["momentum_buffer"] = buf
            g = op.Add(g, op.Mul(buf, self.momentum)) if self.nesterov else buf
        return op.Sub(p, op.Mul(g, lr)), new_state


@dataclass
class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient (``torch.optim.Adam``)."""

    lr: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    name: ClassVar[str] = "adam"
    decoupled: ClassVar[bool] = False

    def check(self) -> None:
        super().check()
        betas = tuple(self.betas) if isinstance(self.betas, (tuple, list)) else ()
        if len(betas) != 2:
            raise EdgetrainError(f"betas must be two numbers, got {self.betas!r}")
        for i, b in enumerate(betas):
            _number(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True)
        _number("eps", self.eps, low=0.0, low_open=True)
        _number("weight_decay", self.weight_decay, low=0.0)

    def slots(self) -> list[str]:
        return ["exp_avg", "exp_avg_sq"]

    def update(self, op: Builder, p: Value, g: Value, state: dict[str, Value], lr: Value,
               step: Value) -> tuple[Value, dict[str, Value]]:
        b1, b2 = (float(b) for b in self.betas)
        if self.weight_decay and self.decoupled:
            p = op.Mul(p, op.Sub(1.0, op.Mul(lr, self.weight_decay)))
        elif self.weight_decay:
            g = op.Add(g, op.Mul(p, self.weight_decay))
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m_new = op.Add(m, op.Mul(op.Sub(g, m), 1.0 - b1))  # torch's lerp
        v_new = op.Add(op.Mul(v, b2), op.Mul(op.Mul(g, g), 1.0 - b2))
        dtype = p.dtype or ir.DataType.FLOAT
        bc1, bc2 = _bias_corrections(op, step, (b1, b2), dtype)
        step_size = op.cast(op.Div(op.cast(lr, bc1.dtype), bc1), dtype)
        bc2_sqrt = op.cast(op.Sqrt(bc2), dtype)
        denom = op.Add(op.Div(op.Sqrt(v_new), bc2_sqrt), self.eps)
        p_new = op.Sub(p, op.Mul(op.Div(m_new, denom), step_size))
        return p_new, {"exp_avg": m_new, "exp_avg_sq": v_new}


@dataclass
class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``; default decay 0.01)."""

    weight_decay: float = 0.01
    name: ClassVar[str] = "adamw"
    decoupled: ClassVar[bool] = True


# Per graph being built: the bias corrections already computed, keyed by (step, betas, dtype).
_SHARED: weakref.WeakKeyDictionary[Builder, dict[tuple[Any, ...], tuple[Value, Value]]] = \
    weakref.WeakKeyDictionary()
#: Below this |z| = t·|ln β| the series of expm1 is used; above it 1 − exp(z) has no cancellation.
_SERIES_LIMIT = 0.5


def _bias_corrections(op: Builder, step: Value, betas: tuple[float, float],
                      dtype: ir.DataType) -> tuple[Value, Value]:
    """1 − β₁ᵗ and 1 − β₂ᵗ, once per step graph, in float64 for float64 models, else float32.

    In float32, 1 − βᵗ = −expm1(t·ln β). Near the first step 1 − Pow(β, t) would cancel: with
    β₂ = 0.999 one ulp of βᵗ is 6e-5 of the result, which is what float64 protects and what a
    runtime that demotes float64 loses. Here z = t·ln β (ln β a constant) is accurate to an ulp,
    and expm1(z) is the Taylor series Σₖ₌₁⁸ zᵏ/k! for |z| ≤ ½ (truncation below 2e-8) and
    1 − Exp(z) beyond, where Exp's error stays an ulp of the result. Only Mul, Concat, MatMul,
    Exp and Where: exact IEEE operations or ones that every runtime computes to an ulp, so the
    values agree with torch's doubles rounded to float32 within a few ulps on every runtime.
    """
    shared = _SHARED.setdefault(op, {})
    key = (step, betas, dtype == ir.DataType.DOUBLE)
    if key in shared:
        return shared[key]
    if dtype == ir.DataType.DOUBLE:
        t = op.cast(step, ir.DataType.DOUBLE)
        out = tuple(op.Sub(1.0, op.Pow(op.const(np.array(b)), t)) for b in betas)
    else:
        t = op.cast(step, ir.DataType.FLOAT)
        z = op.Mul(t, op.const(np.array([[math.log(b)] for b in betas], np.float32)))  # [2, 1]
        zs = op.Max(z, -_SERIES_LIMIT)  # the series never sees large |z| (no overflow)
        z2 = op.Mul(zs, zs)
        p2 = op.Concat(zs, z2, axis=1)  # z, z²
        z4 = op.Mul(z2, z2)
        p4 = op.Concat(p2, op.Mul(p2, z2), axis=1)  # z … z⁴
        p8 = op.Concat(p4, op.Mul(p4, z4), axis=1)  # z … z⁸
        coef = np.array([[-1.0 / math.factorial(k)] for k in range(1, 9)], np.float32)
        series = op.MatMul(p8, op.const(coef))  # −expm1(z)
        c = op.Where(op.Less(z, -_SERIES_LIMIT), op.Sub(1.0, op.Exp(z)), series)
        out = op.Split(op.Reshape(c, [2]), [1, 1], axis=0, outputs=2)
        out = tuple(op.Reshape(v, []) for v in out)
    shared[key] = (out[0], out[1])
    return shared[key]


def _number(what: str, value: Any, low: float, high: float = math.inf,
            low_open: bool = False, high_open: bool = False) -> None:
    """A hyper-parameter must be a finite number in its range (torch's own checks, plus
    finiteness: an infinite or NaN rate would write non-finite weights at the first step)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    if not (math.isfinite(v) and (v > low if low_open else v >= low)
            and (v < high if high_open else v <= high)):
        if math.isinf(high) and low == 0:
            want = "positive and finite" if low_open else "nonnegative and finite"
        else:
            want = (f"a finite number in {'(' if low_open else '['}{low:g}, {high:g}"
                    f"{')' if high_open else ']'}")
        raise EdgetrainError(f"{what} must be {want}, got {value!r}")


_BY_NAME: dict[str, type[Optimizer]] = {c.name: c for c in (SGD, Adam, AdamW)}


def get(optimizer: str | Optimizer | None, lr: float | None = None) -> Optimizer:
    if optimizer is None:
        return SGD(lr=lr if lr is not None else 0.01)
    if isinstance(optimizer, Optimizer):
        optimizer.check()
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in _BY_NAME:
        cls = _BY_NAME[optimizer.lower()]
        return cls(lr=lr) if lr is not None else cls()
    raise EdgetrainError(f"unknown optimizer {optimizer!r}; choose one of {sorted(_BY_NAME)}")


def from_config(cfg: dict[str, Any]) -> Optimizer:
    cfg = dict(cfg)
    cls = _BY_NAME[cfg.pop("name")]
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    return cls(**cfg)


__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "field"]
