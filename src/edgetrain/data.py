"""Reading training data from the files people have, and fitting it to a model.

Readers (each returns a :class:`Dataset`: ``x`` float32, ``y`` int64 class indices or float32
targets, and the class names when the labels were names):

- :func:`read_csv` — a CSV (or TSV) file with a header row; ``target`` names the label column,
  every other column is a numeric feature. Labels that are words (``setosa``) become class
  indices in sorted order (``classes`` keeps the names).
- :func:`read_parquet` — the same for Parquet files (needs ``pyarrow``).
- :func:`read_image_folder` — a folder with one sub-folder per class (``cats/``, ``dogs/``),
  each image resized to the model's input and scaled to [0, 1] (needs Pillow).
- :func:`read_arrays` — ``.npz`` files with arrays ``x`` and ``y``, or an ``.npy`` holding x,
  read with every size checked before anything is allocated.
- :func:`read` picks one of them from the path; the command line's ``--data`` uses it.

Every file is read as data, never as code (no pickles), through the same bounded reader as
model files; a failure is an :class:`~edgetrain.errors.EdgetrainError` naming the file and, for
tables, the column and row.

**The casting policy.** ``fit``, ``evaluate``, ``predict``, ``Model.run`` and the command line
convert data that means the same in the model's dtypes, with one
:class:`DataConversionWarning` naming each conversion, and refuse the rest:

- converted: lists, scalars and CPU torch tensors → arrays; float64 → float32 (a finite value
  beyond float32's range is refused); integers → int64 when they fit, → float when exact;
  whole-number floats → int64 labels; a trailing axis of 1 added or dropped (``y`` of shape
  (N, 1) → (N,)); exact one-hot rows ↔ class indices, for the form the model was compiled
  with;
- refused: strings and objects, fractional labels, integers that do not fit, any other change
  of shape.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._casting import DataConversionWarning, conform, to_numpy
from ._datafile import load_arrays
from ._io import read_regular_file
from .errors import EdgetrainError

__all__ = ["IMAGE_EXTENSIONS", "DataConversionWarning", "Dataset", "conform", "read",
           "read_arrays", "read_csv", "read_image_folder", "read_parquet", "to_numpy"]

#: File name endings :func:`read_image_folder` reads; other files in class folders are skipped.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Largest single image file read (bytes): far beyond any photo, far below a memory problem.
MAX_IMAGE_BYTES = 64 << 20


@dataclass
class Dataset:
    """Examples read from a file: inputs ``x``, labels ``y`` (None when the file has none)."""

    x: np.ndarray
    y: np.ndarray | None = None
    #: Class names in index order, when the labels were names or folder names.
    classes: list[str] | None = None
    #: Feature column names (tables) in the order of ``x``'s last axis.
    columns: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.x)


# -- tables ------------------------------------------------------------------------------------

def read_csv(path: str | os.PathLike[str], target: str | None = None, *,
             input_shape: Sequence[Any] | None = None, classes: Sequence[str] | None = None,
             delimiter: str | None = None) -> Dataset:
    """A CSV file with a header row: ``target`` is the label column, the others features.

    ``input_shape`` (one example's shape, e.g. ``[8, 8]``) folds the feature columns into it
    when the counts agree. ``classes`` maps label names to indices (names outside it are
    refused); by default the sorted names found. ``delimiter`` defaults to a tab for ``.tsv``
    files, else a comma.
    """
    p = os.fspath(path)
    raw = read_regular_file(p, "data file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise EdgetrainError(f"{p!r} is not UTF-8 text: {e.reason} at byte {e.start}") from e
    sep = delimiter or ("\t" if p.lower().endswith(".tsv") else ",")
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=sep) if r]
    except csv.Error as e:
        raise EdgetrainError(f"{p!r} is not a valid CSV file: {e}") from e
    if len(rows) < 2:
        raise EdgetrainError(f"{p!r} needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise EdgetrainError(f"{p!r} row {i + 2} has {len(r)} fields but the header has "
                                 f"{len(header)}")
    cells = np.array(body, dtype=str)
    columns = {name: cells[:, j] for j, name in enumerate(header)}
    return _table(columns, p, target, input_shape, classes, first_row=2)


def read_parquet(path: str | os.PathLike[str], target: str | None = None, *,
                 input_shape: Sequence[Any] | None = None,
                 classes: Sequence[str] | None = None) -> Dataset:
    """A Parquet file, as :func:`read_csv` reads a CSV file (needs ``pyarrow``)."""
    p = os.fspath(path)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise EdgetrainError("reading Parquet files needs pyarrow: pip install pyarrow") from e
    raw = read_regular_file(p, "data file")
    try:
        table = pq.read_table(pa.BufferReader(raw))
    except Exception as e:  # pyarrow's errors have no common base we can name
        raise EdgetrainError(f"cannot read {p!r} as Parquet: {e}") from e
    columns = {name: np.asarray(table.column(name).to_numpy(zero_copy_only=False))
               for name in table.column_names}
    return _table(columns, p, target, input_shape, classes, first_row=1)


def _table(columns: Mapping[str, np.ndarray], path: str, target: str | None,
           input_shape: Sequence[Any] | None, classes: Sequence[str] | None,
           first_row: int) -> Dataset:
    if target is not None and target not in columns:
        raise EdgetrainError(f"{path!r} has no column {target!r}; its columns are "
                             f"{_few(list(columns))}")
    names = [c for c in columns if c != target]
    if not names:
        raise EdgetrainError(f"{path!r} has no feature columns besides {target!r}")
    try:
        x = np.stack([_numbers(columns[c], path, c, first_row) for c in names], axis=1)
    except EdgetrainError as e:
        if target is not None:
            raise
        raise EdgetrainError(f"{e}; if it is the label column, name it (--target COLUMN, "
                             "target=…)") from None
    x = _fold(x.astype(np.float32), input_shape, path)
    if target is None:
        return Dataset(x, None, None, names, path)
    y, found = _labels(columns[target], path, target, classes, first_row)
    return Dataset(x, y, found, names, path)


def _numbers(col: np.ndarray, path: str, name: str, first_row: int) -> np.ndarray:
    """A column as float64, or an error naming the first cell that is not a number."""
    if col.dtype.kind in "biuf":
        values = col.astype(np.float64)
    else:
        text = np.char.strip(col.astype(str))
        try:
            values = text.astype(np.float64)
        except ValueError:
            values = None
        if values is None or np.any(text == ""):
            _first_non_number(text, path, name, first_row)
    assert values is not None  # a column that does not parse names its first bad cell above
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise EdgetrainError(f"{path!r}: column {name!r} row {i + first_row} is {values[i]}; "
                             "fill or drop missing values first")
    return values


def _first_non_number(text: np.ndarray, path: str, name: str, first_row: int) -> None:
    """Raise naming the first cell of a text column that is not a number."""
    for i, cell in enumerate(text):
        try:
            float(cell)
        except ValueError:
            what = "is empty" if cell == "" else f"holds {cell[:40]!r}"
            raise EdgetrainError(
                f"{path!r}: column {name!r} row {i + first_row} {what}, not a number "
                "(features must be numeric: encode categories as numbers first)") from None
    raise EdgetrainError(f"{path!r}: column {name!r} is not numeric")


def _labels(col: np.ndarray, path: str, name: str, classes: Sequence[str] | None,
            first_row: int) -> tuple[np.ndarray, list[str] | None]:
    """Numbers stay numbers (whole ones as int64 indices); words become class indices."""
    text = None if col.dtype.kind in "biuf" else np.char.strip(col.astype(str))
    numeric = text is None
    if text is not None:
        try:
            col = text.astype(np.float64)
            numeric = True
        except ValueError:
            pass
    if numeric and classes is None:
        values = _numbers(col, path, name, first_row)
        whole = np.all(values == np.round(values))
        return (values.astype(np.int64) if whole else values.astype(np.float32)), None
    assert text is not None or classes is not None
    words = text if text is not None else col.astype(str)
    names = list(classes) if classes is not None else sorted(set(words.tolist()))
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted(set(words.tolist()) - set(index))
    if unknown:
        raise EdgetrainError(f"{path!r}: column {name!r} holds class(es) {_few(unknown)} that "
                             f"the model was not trained on (its classes: {_few(names)})")
    return np.array([index[w] for w in words.tolist()], dtype=np.int64), names


def _fold(x: np.ndarray, input_shape: Sequence[Any] | None, path: str) -> np.ndarray:
    """[N, F] features into one example's shape, when its size is F."""
    if input_shape is None or list(input_shape) == [x.shape[1]]:
        return x
    dims = list(input_shape)
    if not all(isinstance(d, int) and d > 0 for d in dims):
        return x
    size = int(np.prod(dims))
    if size != x.shape[1]:
        raise EdgetrainError(f"{path!r} has {x.shape[1]} feature columns but the model takes "
                             f"inputs of shape {dims} ({size} values per example)")
    return x.reshape(len(x), *dims)


# -- images ------------------------------------------------------------------------------------

def read_image_folder(path: str | os.PathLike[str], input_shape: Sequence[Any] | None = None,
                      *, size: tuple[int, int] | None = None,
                      classes: Sequence[str] | None = None) -> Dataset:
    """Images in one sub-folder per class, resized and scaled to [0, 1] float32.

    ``input_shape`` is one example's shape as the model takes it: ``[C, H, W]``
    (channels first), ``[H, W, C]`` (channels last) or ``[H, W]`` (gray), with C = 1 or 3.
    ``size=(H, W)`` overrides its height and width (needed when the model leaves them open).
    ``classes`` fixes the class order (a folder outside it is refused); by default the
    sorted folder names. Images are converted to gray or RGB as the model takes them.
    """
    p = os.fspath(path)
    try:
        from PIL import Image
    except ImportError as e:
        raise EdgetrainError("reading image folders needs Pillow: pip install pillow") from e
    layout, channels, hw = _image_layout(input_shape, size, p)
    found = sorted(d.name for d in os.scandir(p) if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise EdgetrainError(f"{p!r} has no class folders (expected one sub-folder per class, "
                             "holding that class's images)")
    names = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise EdgetrainError(f"{p!r}: class folder(s) {_few(unknown)} are not classes the "
                             f"model was trained on (its classes: {_few(names)})")
    images, labels = [], []
    for name in found:
        files = sorted(f for f in os.listdir(os.path.join(p, name))
                       if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if not files:
            raise EdgetrainError(f"{os.path.join(p, name)!r} holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
        for f in files:
            images.append(_image(Image, os.path.join(p, name, f), channels, hw))
            labels.append(names.index(name))
    x = np.stack(images).astype(np.float32) / np.float32(255.0)
    if layout == "chw":
        x = x.transpose(0, 3, 1, 2)
    elif layout == "hw":
        x = x[..., 0]
    return Dataset(np.ascontiguousarray(x), np.array(labels, dtype=np.int64), names, [], p)


def _image_layout(input_shape: Sequence[Any] | None, size: tuple[int, int] | None,
                  path: str) -> tuple[str, int, tuple[int, int]]:
    """(layout "chw" | "hwc" | "hw", channels, (H, W)) from one example's shape."""
    dims = list(input_shape) if input_shape is not None else None
    if dims is None:
        if size is None:
            raise EdgetrainError(f"reading images from {path!r} needs the model's input "
                                 "shape or size=(H, W)")
        return "hwc", 3, size
    if len(dims) == 3 and dims[0] in (1, 3) and dims[2] not in (1, 3):
        layout, c, h, w = "chw", dims[0], dims[1], dims[2]
    elif len(dims) == 3 and dims[2] in (1, 3):
        layout, c, h, w = "hwc", dims[2], dims[0], dims[1]
    elif len(dims) == 2:
        layout, c, h, w = "hw", 1, dims[0], dims[1]
    else:
        raise EdgetrainError(f"the model's input shape {dims} is not an image of 1 or 3 "
                             "channels ([C, H, W], [H, W, C] or [H, W])")
    if size is not None:
        h, w = size
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise EdgetrainError(f"the model's input {dims} leaves the image size open; give "
                             "the size to resize images to")
    return layout, int(c), (h, w)


def _image(image_module: Any, path: str, channels: int, hw: tuple[int, int]) -> np.ndarray:
    raw = read_regular_file(path, "image", max_bytes=MAX_IMAGE_BYTES)
    try:
        with image_module.open(io.BytesIO(raw)) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            im = im.resize((hw[1], hw[0]), image_module.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except EdgetrainError:
        raise
    except Exception as e:  # Pillow raises many types (UnidentifiedImageError, OSError, …)
        raise EdgetrainError(f"cannot read image {path!r}: {e}") from e
    return arr.reshape(hw[0], hw[1], channels)


# -- arrays and dispatch -----------------------------------------------------------------------

def read_arrays(path: str | os.PathLike[str], need_y: bool = True) -> Dataset:
    """An ``.npz`` with arrays ``x`` and ``y`` (``y`` optional unless ``need_y``), or an
    ``.npy`` holding ``x`` alone."""
    p = os.fspath(path)
    arrays = load_arrays(p, ["x", "y"] if need_y else ["x"], [] if need_y else ["y"])
    return Dataset(arrays["x"], arrays.get("y"), None, [], p)


def read(path: str | os.PathLike[str], target: str | None = None, *,
         input_shape: Sequence[Any] | None = None, classes: Sequence[str] | None = None,
         need_y: bool = True) -> Dataset:
    """Any supported form, chosen by the path: a folder of class folders (images), ``.csv`` /
    ``.tsv``, ``.parquet``, else ``.npz`` / ``.npy``. ``target`` names the label column of a
    table (required when ``need_y``); ``input_shape`` is one example's shape."""
    p = os.fspath(path)
    low = p.lower()
    if os.path.isdir(p):
        return read_image_folder(p, input_shape, classes=classes)
    if low.endswith((".csv", ".tsv", ".parquet", ".pq")):
        if target is None and need_y:
            raise EdgetrainError(f"{p!r} is a table: name its label column (--target COLUMN)")
        if low.endswith((".parquet", ".pq")):
            return read_parquet(p, target, input_shape=input_shape, classes=classes)
        return read_csv(p, target, input_shape=input_shape, classes=classes)
    if target is not None:
        raise EdgetrainError(f"--target names a column of a CSV or Parquet file; {p!r} is "
                             "neither (an .npz holds x and y)")
    return read_arrays(p, need_y)


def _few(names: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(repr(s) for s in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
