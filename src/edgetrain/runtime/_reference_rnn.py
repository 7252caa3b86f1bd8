"""LSTM, GRU and RNN for the reference backend, with every attribute of the ONNX operators.

onnx.reference's own kernels ignore ``activations``, ``activation_alpha``/``beta``, ``clip``,
``input_forget`` and ``sequence_lens``: a model that sets them computes something else there
than in onnxruntime. These follow the operator definitions (onnxruntime's reading where the
text leaves room: alpha and beta are consumed in order by the functions that take them;
steps past a sequence's length keep its state and output zeros) and compute in the input's
own precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from onnx.reference.op_run import OpRun

Fn = Callable[[np.ndarray], np.ndarray]

#: name → (how many of alpha, beta it takes, their defaults, the function)
_ACTS: dict[str, tuple[int, tuple[float, float], Callable[[np.ndarray, float, float],
                                                          np.ndarray]]] = {
    "sigmoid": (0, (0.0, 0.0), lambda x, a, b: 1.0 / (1.0 + np.exp(-x))),
    "tanh": (0, (0.0, 0.0), lambda x, a, b: np.tanh(x)),
    "relu": (0, (0.0, 0.0), lambda x, a, b: np.maximum(x, 0)),
    "softsign": (0, (0.0, 0.0), lambda x, a, b: x / (1 + np.abs(x))),
    "softplus": (0, (0.0, 0.0), lambda x, a, b: np.log1p(np.exp(x))),
    "leakyrelu": (1, (0.01, 0.0), lambda x, a, b: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (1, (1.0, 0.0), lambda x, a, b: np.where(x > a, x, 0)),
    "elu": (1, (1.0, 0.0), lambda x, a, b: np.where(x >= 0, x, a * (np.exp(x) - 1))),
    "hardsigmoid": (2, (0.2, 0.5), lambda x, a, b: np.clip(a * x + b, 0, 1)),
    "affine": (2, (1.0, 0.0), lambda x, a, b: a * x + b),
    "scaledtanh": (2, (1.0, 1.0), lambda x, a, b: a * np.tanh(b * x)),
}


def _functions(names: list[str], alphas: list[float], betas: list[float], dtype: Any
               ) -> list[Fn]:
    out: list[Fn] = []
    alphas, betas = list(alphas), list(betas)
    for name in names:
        key = (name.decode() if isinstance(name, bytes) else name).lower()
        if key not in _ACTS:
            raise ValueError(f"unknown activation function {name!r}")
        count, (a, b), fn = _ACTS[key]
        if count >= 1 and alphas:
            a = alphas.pop(0)
        if count >= 2 and betas:
            b = betas.pop(0)
        out.append(_bound(fn, np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)))
    return out


def _bound(fn: Callable[[np.ndarray, Any, Any], np.ndarray], a: np.ndarray, b: np.ndarray
           ) -> Fn:
    return lambda x: np.asarray(fn(x, a, b), dtype=x.dtype)


class _Recurrent(OpRun):
    """What the three operators share: directions, layout, sequence lengths, the time loop."""

    op_domain = ""
    gates = 1
    defaults: tuple[str, ...] = ()
    n_states = 1

    def _cell(self, k: int, acts: list[Fn], w: np.ndarray, r: np.ndarray,
              b: np.ndarray | None, p: np.ndarray | None
              ) -> Callable[[np.ndarray, list[np.ndarray]], list[np.ndarray]]:
        raise NotImplementedError

    def _clip(self, x: np.ndarray) -> np.ndarray:
        c = getattr(self, "clip", None)
        return x if c is None else np.clip(x, -c, c)

    def _common(self, x: np.ndarray, w: np.ndarray, r: np.ndarray, b: np.ndarray | None,
                lens: np.ndarray | None, initial: list[np.ndarray | None],
                p: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        layout = int(getattr(self, "layout", 0) or 0)
        if layout:
            x = np.swapaxes(x, 0, 1)
            initial = [None if v is None else np.swapaxes(v, 0, 1) for v in initial]
        n_dir, hsz = w.shape[0], r.shape[-1]
        per = len(self.defaults)
        names = list(getattr(self, "activations", None) or list(self.defaults) * n_dir)
        acts = _functions(names, list(getattr(self, "activation_alpha", None) or []),
                          list(getattr(self, "activation_beta", None) or []), x.dtype)
        direction = getattr(self, "direction", "forward") or "forward"
        direction = direction.decode() if isinstance(direction, bytes) else direction
        dirs = [0, 1] if direction == "bidirectional" else [int(direction == "reverse")]
        batch = x.shape[1]
        ys: list[np.ndarray] = []
        finals: list[list[np.ndarray]] = [[] for _ in range(self.n_states)]
        for k, d in enumerate(dirs):
            cell = self._cell(k, acts[k * per:(k + 1) * per], w[k], r[k],
                              None if b is None else b[k], None if p is None else p[k])
            states = [np.zeros((batch, hsz), x.dtype) if v is None else v[k] for v in initial]
            y = np.zeros((x.shape[0], batch, hsz), dtype=x.dtype)
            for t in (range(x.shape[0] - 1, -1, -1) if d else range(x.shape[0])):
                new = cell(x[t], states)
                on = np.ones((batch, 1), bool) if lens is None else (t < lens)[:, None]
                states = [np.where(on, v, s) for v, s in zip(new, states)]
                y[t] = np.where(on, new[0], 0)
            ys.append(y[:, None])
            for i, s in enumerate(states):
                finals[i].append(s[None])
        outs = [np.concatenate(ys, axis=1)] + [np.concatenate(f, axis=0) for f in finals]
        if layout:
            outs = [np.transpose(outs[0], (2, 0, 1, 3))] + [np.swapaxes(v, 0, 1)
                                                            for v in outs[1:]]
        return tuple(outs[:len(self.onnx_node.output)])


class LSTM(_Recurrent):
    gates, defaults, n_states = 4, ("Sigmoid", "Tanh", "Tanh"), 2

    def _run(self, X: np.ndarray, W: np.ndarray, R: np.ndarray, B: Any = None,
             sequence_lens: Any = None, initial_h: Any = None, initial_c: Any = None,
             P: Any = None, **attrs: Any) -> tuple[np.ndarray, ...]:
        return self._common(X, W, R, B, sequence_lens, [initial_h, initial_c], P)

    def _cell(self, k: int, acts: list[Fn], w: np.ndarray, r: np.ndarray,
              b: np.ndarray | None, p: np.ndarray | None
              ) -> Callable[[np.ndarray, list[np.ndarray]], list[np.ndarray]]:
        f, g, h = acts
        hsz = r.shape[-1]
        bias = 0 if b is None else b[:4 * hsz] + b[4 * hsz:]
        pi, po, pf = (np.zeros(hsz, w.dtype),) * 3 if p is None else np.split(p, 3)
        coupled = bool(getattr(self, "input_forget", 0) or 0)

        def step(x: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
            h0, c0 = states
            i, o, fg, c = np.split(x @ w.T + h0 @ r.T + bias, 4, axis=-1)
            i = f(self._clip(i + pi * c0))
            fg = 1 - i if coupled else f(self._clip(fg + pf * c0))
            c = fg * c0 + i * g(self._clip(c))
            o = f(self._clip(o + po * c))
            return [o * h(c), c]

        return step


class _HiddenOnly(_Recurrent):
    """GRU and RNN: one state (the hidden one), no peepholes."""

    def _run(self, X: np.ndarray, W: np.ndarray, R: np.ndarray, B: Any = None,
             sequence_lens: Any = None, initial_h: Any = None, **attrs: Any
             ) -> tuple[np.ndarray, ...]:
        return self._common(X, W, R, B, sequence_lens, [initial_h])


class GRU(_HiddenOnly):
    gates, defaults = 3, ("Sigmoid", "Tanh")

    def _cell(self, k: int, acts: list[Fn], w: np.ndarray, r: np.ndarray,
              b: np.ndarray | None, p: np.ndarray | None
              ) -> Callable[[np.ndarray, list[np.ndarray]], list[np.ndarray]]:
        f, g = acts
        hsz = r.shape[-1]
        b = np.zeros(6 * hsz, w.dtype) if b is None else b
        wz, wr, wh = np.split(w, 3)
        rz, rr, rh = np.split(r, 3)
        wbz, wbr, wbh, rbz, rbr, rbh = np.split(b, 6)
        linear = bool(getattr(self, "linear_before_reset", 0) or 0)

        def step(x: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
            (h0,) = states
            z = f(self._clip(x @ wz.T + h0 @ rz.T + wbz + rbz))
            rg = f(self._clip(x @ wr.T + h0 @ rr.T + wbr + rbr))
            if linear:
                pre = x @ wh.T + rg * (h0 @ rh.T + rbh) + wbh
            else:
                pre = x @ wh.T + (rg * h0) @ rh.T + rbh + wbh
            return [(1 - z) * g(self._clip(pre)) + z * h0]

        return step


class RNN(_HiddenOnly):
    defaults = ("Tanh",)

    def _cell(self, k: int, acts: list[Fn], w: np.ndarray, r: np.ndarray,
              b: np.ndarray | None, p: np.ndarray | None
              ) -> Callable[[np.ndarray, list[np.ndarray]], list[np.ndarray]]:
        (f,) = acts
        hsz = r.shape[-1]
        bias = 0 if b is None else b[:hsz] + b[hsz:]

        def step(x: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
            return [f(self._clip(x @ w.T + states[0] @ r.T + bias))]

        return step


RECURRENT_OPS: list[type[OpRun]] = [GRU, LSTM, RNN]
