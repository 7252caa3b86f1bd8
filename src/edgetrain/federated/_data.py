"""Data for federated runs: load an npz (or scikit-learn's digits), hold out a test split and
partition the rest over clients, IID or with a seeded Dirichlet label skew.

Everything here is plain numpy so that a device (a SuperNode) needs nothing beyond the core
install to read its partition.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["Dataset", "dirichlet_partition", "iid_partition", "load_dataset",
           "load_partition", "save_partition", "train_test_split"]


@dataclass(frozen=True)
class Dataset:
    """Features ``x`` (float32, one row per example) and labels ``y`` (int64 class indices)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.x[idx], self.y[idx])


def load_dataset(path: str | os.PathLike[str] | None = None) -> Dataset:
    """An npz with arrays ``x`` and ``y``; scikit-learn's digits (8x8, scaled to [0, 1]) if None.

    Class labels are returned as int64 indices because that is what a compiled file with
    ``labels="index"`` takes; float features as float32, the dtype of compiled models.
    """
    if path is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:  # pragma: no cover - depends on the install
            raise InputError("the default data set is scikit-learn's digits: "
                             "pip install scikit-learn, or pass --data DATA.npz") from e
        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)
        return Dataset(x, digits.target.astype(np.int64))
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"data file not found: {path}")
    with np.load(path) as npz:
        missing = [k for k in ("x", "y") if k not in npz.files]
        if missing:
            raise InputError(f"{path}: the npz needs arrays 'x' and 'y'; missing {missing} "
                             f"(has {npz.files})")
        x, y = npz["x"], npz["y"]
    if len(x) != len(y):
        raise InputError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    if len(y) == 0:
        raise InputError(f"{path}: empty data set")
    if x.dtype.kind == "f" and x.dtype != np.float32:
        x = x.astype(np.float32)
    if y.dtype.kind in "iu":
        y = y.astype(np.int64)
    return Dataset(x, y)


def train_test_split(data: Dataset, test_fraction: float = 0.25, seed: int = 0,
                     ) -> tuple[Dataset, Dataset]:
    """A seeded split that keeps every class in the test set (stratified for integer labels)."""
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    if data.y.dtype.kind in "iu" and data.y.ndim == 1:
        test = []
        for c in np.unique(data.y):
            idx = rng.permutation(np.flatnonzero(data.y == c))
            test.append(idx[:max(1, round(len(idx) * test_fraction))])
        test_idx = np.sort(np.concatenate(test))
    else:
        perm = rng.permutation(len(data))
        test_idx = np.sort(perm[:max(1, round(len(data) * test_fraction))])
    mask = np.ones(len(data), dtype=bool)
    mask[test_idx] = False
    return data.take(np.flatnonzero(mask)), data.take(test_idx)


def iid_partition(n: int, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Indices of ``n`` examples shuffled and cut into ``num_clients`` near-equal shares."""
    _check_clients(n, num_clients)
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, num_clients)]


def dirichlet_partition(y: np.ndarray, num_clients: int, alpha: float, seed: int = 0,
                        min_size: int = 10, max_tries: int = 1000) -> list[np.ndarray]:
    """Label-skewed shares: each class is spread over clients by proportions ~ Dir(alpha).

    The usual non-IID benchmark split (Hsu et al. 2019): small ``alpha`` gives each client a
    few dominant classes. Draws are repeated (same seeded stream) until every client holds at
    least ``min_size`` examples, so no client is left with nothing to train on.
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise InputError("a Dirichlet split needs integer class labels y of shape [N]")
    if not alpha > 0:
        raise InputError(f"the Dirichlet concentration alpha must be positive, got {alpha}")
    _check_clients(len(y), num_clients)
    min_size = min(min_size, len(y) // num_clients)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(max_tries):
        shares: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for k, part in enumerate(np.split(idx, cuts)):
                shares[k].extend(part.tolist())
        if min(len(s) for s in shares) >= min_size:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shares]
    raise InputError(f"could not draw a Dirichlet(alpha={alpha}) split of {len(y)} examples "
                     f"over {num_clients} clients with at least {min_size} each; raise alpha "
                     "or lower the number of clients")


def save_partition(path: str | os.PathLike[str], data: Dataset) -> str:
    """One client's share as an npz with ``x`` and ``y`` (what a SuperNode is pointed at)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, x=data.x, y=data.y)
    os.replace(tmp, path)
    return path


def load_partition(path: str | os.PathLike[str]) -> Dataset:
    return load_dataset(path)


def _check_clients(n: int, num_clients: int) -> None:
    if num_clients < 1:
        raise InputError(f"the number of clients must be at least 1, got {num_clients}")
    if num_clients > n:
        raise InputError(f"cannot split {n} examples over {num_clients} clients")
