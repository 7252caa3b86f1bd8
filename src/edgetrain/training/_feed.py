"""Where the training loops get their batches: arrays held in memory, or a stream of batches
(a torch ``DataLoader``, a generator, a list of ``(x, y)`` pairs).

Everything is fitted to the model's declared inputs under the casting policy of
:mod:`edgetrain.data` by a :class:`Feeder`, which collects what it converted so that a whole
``fit`` reports it in one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .._casting import DataConversionWarning, conform, to_numpy
from ..errors import InputError

Inputs = dict[str, np.ndarray]
Batch = tuple[Inputs, np.ndarray | None]

#: Keys a dict batch may use for its labels besides the model's own label name.
LABEL_KEYS = ("y", "label", "labels", "target")


class Feeder:
    """Fits data to one model: input arrays by name, labels in the label's dtype and form."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.names = [s.name for s in model.signatures["infer"].inputs]
        self.label = model.input_name("train", "label")
        plan = model._input_plan(model.signatures["train"])
        self.specs = {k: plan[k] for k in [*self.names, self.label]}
        self.labels = model.meta.labels if model.meta.classification else None
        self.notes: list[str] = []

    def x(self, x: Any, where: str = "x") -> Inputs:
        """Model inputs by name from an array (single-input models) or a dict of arrays."""
        if isinstance(x, Mapping):
            unknown = sorted(set(x) - set(self.names))
            if unknown:
                raise InputError(f"{where}: unknown input(s) {unknown}; the model takes "
                                 f"{self.names}")
            return {k: self._conform(k, v) for k, v in x.items()}
        if len(self.names) != 1:
            raise InputError(f"this model has inputs {self.names}; pass x as a dict")
        return {self.names[0]: self._conform(self.names[0], x)}

    def y(self, y: Any) -> np.ndarray:
        spec = self.specs[self.label]
        arr, notes = conform(y, spec.dtype, spec.shape, self.label, labels=self.labels)
        self._note(notes)
        return arr

    def _conform(self, name: str, value: Any) -> np.ndarray:
        spec = self.specs[name]
        arr, notes = conform(value, spec.dtype, spec.shape, name)
        self._note(notes)
        return arr

    def _note(self, notes: list[str]) -> None:
        self.notes.extend(n for n in notes if n not in self.notes)

    def warn(self, where: str, stacklevel: int = 3) -> None:
        """One warning for everything converted so far that the model has not reported."""
        new = [n for n in self.notes if n not in self.model._conversions]
        if new:
            self.model._conversions.update(new)
            warnings.warn(f"{where}: converted {', '.join(new)} (edgetrain's casting policy; "
                          "see the edgetrain.data documentation)", DataConversionWarning,
                          stacklevel=stacklevel)

    def batch(self, item: Any, need_y: bool) -> Batch:
        """One batch of a stream: ``(x, y)`` (a DataLoader's list too), ``x`` alone (for
        ``predict``), or a dict of inputs with the labels under the label's name or ``y``."""
        if isinstance(item, Mapping):
            key = next((k for k in (self.label, *LABEL_KEYS) if k in item), None)
            xs = self.x({k: v for k, v in item.items() if k != key}, "batch")
            y = item[key] if key is not None else None
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            xs, y = self.x(item[0], "batch"), item[1]
        elif isinstance(item, (tuple, list)) and len(item) == 1:
            xs, y = self.x(item[0], "batch"), None
        elif not need_y and not isinstance(item, (tuple, list)):
            xs, y = self.x(item, "batch"), None
        else:
            raise InputError(f"a batch must be (x, y) or a dict of inputs and labels, got "
                             f"{_describe(item)}")
        if y is None:
            if need_y:
                raise InputError("a batch has no labels: yield (x, y) pairs, or dicts with "
                                 f"the labels under {self.label!r}")
            return xs, None
        return xs, self.y(y)


class Grouped(dict[str, np.ndarray]):
    """A batch's inputs that are row ``index`` of ``stacked`` (every input ``[G, B, …]``,
    the labels ``[G, B]`` in ``labels``): the batches of one group, made at once."""

    __slots__ = ("index", "labels", "stacked")

    def __init__(self, stacked: Inputs, labels: np.ndarray | None, index: int) -> None:
        super().__init__((k, v[index]) for k, v in stacked.items())
        self.stacked, self.labels, self.index = stacked, labels, index


class ArraySource:
    """Examples held in memory, batched (and shuffled) anew every epoch."""

    def __init__(self, xs: Inputs, y: np.ndarray | None, batch_size: int,
                 shuffle: bool = False) -> None:
        n = len(next(iter(xs.values())))
        if n == 0:
            raise InputError("the data set is empty")
        for k, v in xs.items():
            if len(v) != n:
                raise InputError(f"input {k!r} has {len(v)} rows but {n} were expected")
        if y is not None and len(y) != n:
            raise InputError(f"y has {len(y)} rows but x has {n}")
        self.xs, self.y, self.n = xs, y, n
        self.batch_size, self.shuffle = batch_size, shuffle
        self._ring: dict[tuple[Any, ...], list[np.ndarray | None]] = {}

    @property
    def steps(self) -> int:
        return -(-self.n // self.batch_size)

    @property
    def batch_bytes(self) -> int:
        """Bytes of a full batch, inputs and labels."""
        rows = [*self.xs.values(), *([] if self.y is None else [self.y])]
        return self.batch_size * sum(v[:1].nbytes for v in rows)

    def batches(self, rng: np.random.Generator | None = None, group: int = 1
                ) -> Iterator[Batch]:
        """The epoch's batches, the same with any ``group``. With ``group`` above 1 the rows
        of up to ``group`` full batches in a row are gathered at once, stacked ``[G, B, …]``,
        and each batch's inputs are a :class:`Grouped` view of its row: a driver that steps
        those batches together passes the stack as it is (``train_steps``' input). Shuffled
        rows go into one of two buffers used in turn, so a batch of a group is valid until
        the group after the next one is made."""
        order = rng.permutation(self.n) if self.shuffle and rng is not None else None
        size, start = self.batch_size, 0
        while start < self.n:
            full = min(group, (self.n - start) // size)
            if full < 2:
                sl: Any = slice(start, start + size) if order is None \
                    else order[start:start + size]
                yield ({k: v[sl] for k, v in self.xs.items()},
                       None if self.y is None else self.y[sl])
                start += size
                continue
            rows = slice(start, start + full * size) if order is None \
                else order[start:start + full * size]
            stacked = {k: self._rows(k, v, rows, full) for k, v in self.xs.items()}
            y = None if self.y is None else self._rows(None, self.y, rows, full)
            for j in range(full):
                yield Grouped(stacked, y, j), None if y is None else y[j]
            start += full * size

    def _rows(self, key: str | None, v: np.ndarray, rows: Any, full: int) -> np.ndarray:
        """``v[rows]`` as ``[full, B, …]``: a view of consecutive rows, else gathered into
        the next of two buffers kept for this shape (a fresh array of a few MB costs a
        page fault per 4 KiB on its first write, more than the gather itself)."""
        shape = (full, self.batch_size, *v.shape[1:])
        if isinstance(rows, slice):
            return v[rows].reshape(shape)
        ring = self._ring.setdefault((key, shape), [None, None])
        buf = ring[0] if ring[0] is not None else np.empty(shape, v.dtype)
        ring[0], ring[1] = ring[1], buf
        return np.take(v, rows, axis=0, out=buf.reshape(len(rows), *v.shape[1:]),
                       mode="clip").reshape(shape)  # "clip": "raise" would copy twice

    def split(self, fraction: float, seed: int) -> tuple[ArraySource, ArraySource]:
        """(training, validation): a seeded random ``fraction`` held out, the same every run
        with the same data and seed (so a resumed run validates on the same examples)."""
        if not 0 < fraction < 1:
            raise InputError(f"validation_split must lie in (0, 1), got {fraction}")
        n_val = round(self.n * fraction)
        if n_val < 1 or n_val >= self.n:
            raise InputError(f"validation_split={fraction} of {self.n} examples leaves no "
                             "training or no validation examples")
        order = np.random.default_rng(seed).permutation(self.n)
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])

        def take(idx: np.ndarray, shuffle: bool) -> ArraySource:
            return ArraySource({k: v[idx] for k, v in self.xs.items()},
                               None if self.y is None else self.y[idx], self.batch_size,
                               shuffle)

        return take(train, self.shuffle), take(val, False)


class StreamSource:
    """Batches from an iterable: re-iterated every epoch, or drawn on from one iterator.

    A one-shot iterator (a generator) serves one epoch unless ``steps_per_epoch`` says how
    many of its batches make an epoch; a re-iterable (a DataLoader, a list) starts over every
    epoch and may be cut to ``steps_per_epoch`` batches.
    """

    def __init__(self, data: Iterable[Any], feeder: Feeder, *, need_y: bool = True,
                 steps_per_epoch: int | None = None, epochs: int = 1) -> None:
        self.data, self.feeder, self.need_y = data, feeder, need_y
        self.one_shot = iter(data) is data
        if self.one_shot and epochs > 1 and steps_per_epoch is None:
            raise InputError("a generator or iterator can be read only once, which makes one "
                             "epoch; pass a re-iterable (a DataLoader, a list of batches), "
                             "steps_per_epoch, or epochs=1")
        self.steps_per_epoch = steps_per_epoch
        self._it: Iterator[Any] | None = None
        self.exhausted = False

    @property
    def steps(self) -> int | None:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        try:
            return None if self.one_shot else len(self.data)  # type: ignore[arg-type]
        except TypeError:
            return None

    def batches(self, rng: np.random.Generator | None = None) -> Iterator[Batch]:
        if self.one_shot:
            self._it = self._it or iter(self.data)
            it = self._it
        else:
            it = iter(self.data)
        count = 0
        while self.steps_per_epoch is None or count < self.steps_per_epoch:
            try:
                item = next(it)
            except StopIteration:
                self.exhausted = self.one_shot
                return
            count += 1
            batch = self.feeder.batch(item, self.need_y)
            self.feeder.warn("batch", stacklevel=2)
            yield batch


def is_stream(x: Any, y: Any) -> bool:
    """Whether ``x`` is a stream of batches: no ``y`` given, and not an array or a dict."""
    if y is not None:
        return False
    if isinstance(x, (np.ndarray, Mapping, str, bytes)) or hasattr(x, "__array__"):
        return False
    return hasattr(x, "__iter__")


def _describe(item: Any) -> str:
    if isinstance(item, (tuple, list)):
        return f"a {type(item).__name__} of {len(item)} items"
    arr = to_numpy(item) if hasattr(item, "shape") else None
    return f"an array of shape {list(arr.shape)}" if arr is not None else type(item).__name__
