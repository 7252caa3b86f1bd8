"""The casting policy: which conversions of the caller's data edgetrain makes itself.

Data rarely arrives in the exact dtype and shape a model file declares: scikit-learn, pandas
and NumPy make float64 features and int32 or (N, 1) labels, a torch DataLoader yields tensors,
a quick test passes Python lists. Refusing all of these made every user write the same
``.astype`` lines; accepting anything would hide real mistakes. So edgetrain converts what
keeps the data's meaning and refuses what does not:

**Done (one warning names each conversion):**

- Python lists, scalars and CPU torch tensors become NumPy arrays.
- Floats to the model's float type (float64 → float32): rounded as every framework rounds;
  a finite value beyond the target's range is refused instead.
- Integers and booleans to another integer type (int32 → int64, uint8 → int64) when every
  value fits; to a float type when every value is exact in it (at most 2²⁴ for float32).
- Floats to an integer type (labels read from a CSV file) when every value is a whole number
  in range.
- A trailing axis of size 1 added or removed (labels (N, 1) → (N,), targets (N,) → (N, 1)).
- Labels of a cross-entropy model: exact one-hot rows → class indices for a model compiled
  with index labels, class indices → one-hot rows for one compiled with one-hot labels.

**Refused (an :class:`~edgetrain.errors.InputError` naming the input):** strings, objects and
complex numbers; floats with a fractional part where integers are expected; integers that do
not fit or are not exact in the target type; any other change of shape (a flattened image
stays an error: the model cannot know how to fold it back).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["DataConversionWarning", "conform", "to_numpy"]


class DataConversionWarning(UserWarning):
    """edgetrain converted data under the casting policy (float64 → float32, …)."""


def to_numpy(value: Any, name: str = "data") -> np.ndarray:
    """``value`` as a NumPy array: arrays as they are, torch tensors detached and copied to
    the CPU, lists and scalars through ``np.asarray``."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged lists and the like
        raise InputError(f"{name} cannot be read as an array: {e}") from e
    return arr


#: The largest integer each float type holds exactly (a larger one may round).
_EXACT_INT = {2: 2 ** 11, 4: 2 ** 24, 8: 2 ** 53}


def conform(value: Any, dtype: np.dtype, shape: list[Any], name: str, *,
            labels: str | None = None) -> tuple[np.ndarray, list[str]]:
    """``value`` converted under the policy towards ``dtype`` and ``shape`` (a declared
    shape: ints, names or None), and what was converted. ``labels`` is ``"index"`` or
    ``"onehot"`` for the label input of a cross-entropy model, else None.

    The shape is only adjusted here, not checked: the caller checks it as before.
    """
    arr = to_numpy(value, f"input {name!r}")
    notes: list[str] = []
    if arr.dtype.kind not in "biuf":
        raise InputError(f"input {name!r} holds {_kind(arr)}; expected numbers "
                         f"({dtype}{shape})")
    if labels is not None:
        arr = _labels(arr, dtype, shape, name, labels, notes)
    if arr.ndim == len(shape) + 1 and arr.ndim >= 2 and arr.shape[-1] == 1:
        notes.append(f"{name} {_shape(arr.shape)} → {_shape(arr.shape[:-1])}")
        arr = arr.reshape(arr.shape[:-1])
    elif arr.ndim == len(shape) - 1 and arr.ndim >= 1 and shape and shape[-1] == 1:
        notes.append(f"{name} {_shape(arr.shape)} → {_shape((*arr.shape, 1))}")
        arr = arr.reshape((*arr.shape, 1))
    if arr.dtype != dtype:
        notes.append(f"{name} {arr.dtype} → {dtype}")
        arr = _cast(arr, np.dtype(dtype), name)
    return arr, notes


def _labels(arr: np.ndarray, dtype: np.dtype, shape: list[Any], name: str, labels: str,
            notes: list[str]) -> np.ndarray:
    """One-hot rows ↔ class indices, when the other form was compiled and the data say
    exactly the same thing."""
    if labels == "index" and arr.ndim == 2 and arr.shape[1] > 1 and len(shape) == 1:
        if not _is_onehot(arr):
            raise InputError(f"input {name!r} has shape {list(arr.shape)} but the model "
                             f"takes class indices {shape}; rows that are not exactly one-hot "
                             "cannot be turned into indices (compile with labels='onehot')")
        notes.append(f"{name} one-hot rows → class indices")
        out: np.ndarray = np.argmax(arr, axis=1).astype(np.int64)
        return out
    n = shape[-1] if len(shape) == 2 else None
    flat = arr.reshape(arr.shape[0]) if arr.ndim == 2 and arr.shape[1] == 1 else arr
    if labels == "onehot" and flat.ndim == 1 and isinstance(n, int) and n > 1:
        idx = _cast(flat, np.dtype(np.int64), name)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise InputError(f"input {name!r}: class indices must lie in [0, {n}); got min "
                             f"{int(idx.min())}, max {int(idx.max())}")
        notes.append(f"{name} class indices → one-hot rows")
        rows: np.ndarray = np.eye(n, dtype=dtype)[idx]
        return rows
    return arr


def _is_onehot(arr: np.ndarray) -> bool:
    ones = arr == 1
    return bool(np.all(ones | (arr == 0)) and np.all(ones.sum(axis=1) == 1))


def _cast(arr: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    src = arr.dtype
    if dtype.kind == "f":
        if src.kind == "f":
            with np.errstate(over="ignore", invalid="ignore"):
                out = arr.astype(dtype)
            if bool(np.any(np.isinf(out) & np.isfinite(arr))):
                raise InputError(f"input {name!r} holds values beyond {dtype}'s range "
                                 f"(largest {float(np.nanmax(np.abs(arr))):.4g})")
            return out
        limit = _EXACT_INT.get(dtype.itemsize, 0)
        if arr.size and src.kind != "b" and int(np.max(np.abs(arr.astype(np.float64)))) > limit:
            raise InputError(f"input {name!r} holds integers beyond {limit}, which {dtype} "
                             f"cannot hold exactly; convert them yourself if rounding is meant")
        return arr.astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if src.kind == "f":
            whole = np.isfinite(arr) & (arr == np.floor(arr))
            if not bool(whole.all()):
                bad = arr[~whole].reshape(-1)[0].item()
                raise InputError(f"input {name!r} holds non-integer values (e.g. {bad!r}); "
                                 f"the model takes {dtype} values here")
        if arr.size and src.kind != "b" and (float(arr.min()) < info.min
                                            or float(arr.max()) > info.max):
            raise InputError(f"input {name!r} holds values outside {dtype}'s range "
                             f"[{info.min}, {info.max}]")
        return arr.astype(dtype)
    raise InputError(f"input {name!r} has dtype {src}, expected {dtype}")


def _kind(arr: np.ndarray) -> str:
    return {"U": "strings", "S": "bytes", "O": "Python objects", "c": "complex numbers",
            "M": "dates", "m": "time deltas", "V": "raw records"}.get(arr.dtype.kind,
                                                                    f"{arr.dtype} values")


def _shape(shape: tuple[int, ...], batch: bool = True) -> str:
    """``(N, 1)``: the batch dimension as N, so a note does not change with the batch size."""
    dims = ["N" if i == 0 and batch else str(d) for i, d in enumerate(shape)]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
