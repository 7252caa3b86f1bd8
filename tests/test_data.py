"""Data in the shapes people have: CSV tables, image folders, torch DataLoaders, generators,
float64 / int32 / (N, 1) arrays and lists — read, converted under the casting policy (with one
warning) or refused with a message that names the culprit, and trained on."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgetrain as et
from edgetrain.data import DataConversionWarning
from edgetrain.demos._data import digits
from edgetrain.demos._models import seed_mlp

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _model(**kw: Any) -> et.Model:
    kw.setdefault("optimizer", et.optim.SGD(lr=0.05, momentum=0.9))
    return et.compile(seed_mlp(), **kw).load()


def _conversions(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DataConversionWarning)]


def write_digits_csv(path: Path, x: np.ndarray, y: np.ndarray, words: bool = True) -> None:
    """64 pixel columns and a label column in the middle, as a spreadsheet would have it."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"p{i}" for i in range(32)] + ["label"] + [f"p{i}" for i in range(32, 64)])
        for xi, yi in zip(x.reshape(len(x), 64), y):
            cells = [repr(float(v)) for v in xi]
            w.writerow(cells[:32] + [WORDS[yi] if words else str(yi)] + cells[32:])


def write_image_folder(root: Path, x: np.ndarray, y: np.ndarray, size: int = 16,
                       mode: str = "L") -> None:
    """PNG files in one folder per class, written with Pillow (upscaled 8x8 digits)."""
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / WORDS[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (img * 255).round().astype(np.uint8)
        im = Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.NEAREST)
        im.convert(mode).save(folder / f"{i:04d}.png")
    (root / "README.txt").write_text("not a class folder, not an image")


# -- casting policy in fit --------------------------------------------------------------------

def test_fit_converts_what_numpy_and_pandas_make_with_one_warning() -> None:
    """float64 x and int32 (N, 1) labels (scikit-learn's and pandas' defaults) train exactly
    as the converted arrays do, with one warning naming each conversion; the same for lists
    (the small-data case)."""
    x, y, _, _ = digits()
    x, y = x[:200], y[:200]
    ref = _model()
    h_ref = ref.fit(x, y, epochs=2, batch_size=32, progress=False)
    m = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = m.fit(x.astype(np.float64), y.astype(np.int32).reshape(-1, 1), epochs=2,
                  batch_size=32, progress=False)
    (message,) = _conversions(caught)
    for part in ("x float64 → float32", "y (N, 1) → (N,)", "y int32 → int64"):
        assert part in message, message
    assert h.history == h_ref.history
    lists = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h_lists = lists.fit(x.tolist(), y.tolist(), epochs=2, batch_size=32, progress=False)
    assert len(_conversions(caught)) == 1
    assert h_lists.history == h_ref.history


def test_fit_refuses_what_would_change_the_data_and_trains_nothing() -> None:
    x, y, _, _ = digits()
    m = _model()
    before = m.state()
    cases = [
        ((x, y + 0.5), "'y' holds non-integer values (e.g. 0.5)"),
        ((x.astype(str), y), "'x' holds strings"),
        ((x.reshape(len(x), 64), y), "'x' has shape"),
        ((x, y[:-3]), "y has"),
        ((x, np.eye(10)[y] * 0.5), "rows that are not exactly one-hot"),
    ]
    for (xx, yy), text in cases:
        with pytest.raises(et.InputError) as info:
            m.fit(xx, yy, progress=False)
        assert text in str(info.value), str(info.value)
    for k, v in m.state().items():
        np.testing.assert_array_equal(v, before[k])


def test_index_and_onehot_labels_are_accepted_by_either_model() -> None:
    """The form of the labels the model was not compiled with is converted exactly."""
    x, y, _, _ = digits()
    x, y = x[:128], y[:128]
    index, onehot = _model(), _model(labels="onehot")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataConversionWarning)
        h1 = index.fit(x, np.eye(10, dtype=np.float32)[y], shuffle=False, progress=False)
        h2 = onehot.fit(x, y, shuffle=False, progress=False)
    h_ref = _model().fit(x, y, shuffle=False, progress=False)
    assert h1.history == h_ref.history
    np.testing.assert_allclose(h2.history["loss"], h_ref.history["loss"], rtol=1e-6)


# -- streams: DataLoader, generators, lists of batches ----------------------------------------

def test_torch_dataloader_trains_like_the_same_arrays() -> None:
    """A DataLoader of float64 and int32 tensors (no shuffling) trains, validates, evaluates
    and predicts exactly like the same batches given as arrays."""
    torch = pytest.importorskip("torch")
    x, y, xt, yt = digits()
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x.astype(np.float64)),
                                        torch.from_numpy(y.astype(np.int32)))
    loader = torch.utils.data.DataLoader(ds, batch_size=50, shuffle=False)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        torch.from_numpy(xt), torch.from_numpy(yt)), batch_size=64)
    a, b = _model(), _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h_loader = a.fit(loader, epochs=2, validation_data=val, metrics=["f1"], progress=False)
    assert len(_conversions(caught)) == 1  # once, though every batch was converted
    h_arrays = b.fit(x, y, epochs=2, batch_size=50, shuffle=False,
                     validation_data=(xt, yt), metrics=["f1"], progress=False)
    assert set(h_loader.history) == {"loss", "val_loss", "val_accuracy", "val_f1"}
    for k, v in h_loader.history.items():
        np.testing.assert_allclose(v, h_arrays.history[k], rtol=1e-6, err_msg=k)
    np.testing.assert_array_equal(a.predict(val), b.predict(xt))
    ev = a.evaluate(val, metrics=["top_2_accuracy"])
    assert ev["accuracy"] > 0.9 and ev["top_2_accuracy"] >= ev["accuracy"]


def test_generators_serve_one_epoch_unless_told_how_long_an_epoch_is() -> None:
    x, y, _, _ = digits()

    def batches() -> Any:
        while True:
            for s in range(0, 320, 32):
                yield x[s:s + 32], y[s:s + 32]

    m = _model()
    with pytest.raises(et.InputError, match="can be read only once"):
        m.fit(batches(), epochs=2, progress=False)
    h = m.fit(batches(), epochs=3, steps_per_epoch=10, progress=False)
    assert len(h["loss"]) == 3 and m.step == 30
    h = m.fit(iter([(x[:32], y[:32]), (x[32:64], y[32:64])]), progress=False)
    assert m.step == 32
    with pytest.raises(et.InputError, match="a batch must be"):
        m.fit([x[:4], x[4:8]], progress=False)
    with pytest.raises(et.InputError, match="validation_split needs array data"):
        m.fit([(x[:4], y[:4])], validation_split=0.5, progress=False)


# -- CSV, Parquet, image folders --------------------------------------------------------------

def test_csv_with_named_classes_trains(tmp_path: Path) -> None:
    x, y, xt, yt = digits()
    write_digits_csv(tmp_path / "train.csv", x, y)
    write_digits_csv(tmp_path / "test.csv", xt, yt)
    ds = et.data.read_csv(tmp_path / "train.csv", "label", input_shape=[8, 8])
    assert ds.classes == sorted(WORDS) and ds.x.dtype == np.float32 and ds.x.shape == x.shape
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(np.array(ds.classes)[ds.y], np.array(WORDS)[y])
    m = _model()
    m.fit(ds.x, ds.y, epochs=5, progress=False)
    test = et.data.read(tmp_path / "test.csv", "label", input_shape=[8, 8],
                        classes=ds.classes)
    assert m.evaluate(test.x, test.y)["accuracy"] > 0.9


def test_csv_errors_name_the_file_column_and_row(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    cases = {
        "a,b,label\n1,2,x\n3,,y\n": ["column 'b' row 3 is empty"],
        "a,b,label\n1,2,x\n3,red,y\n": ["column 'b' row 3 holds 'red'", "encode categories"],
        "a,b,label\n1,2,x\n3,4\n": ["row 3 has 2 fields but the header has 3"],
        "a,b,label\n1,nan,x\n": ["column 'b' row 2 is nan", "missing values"],
        "a,b\n1,2\n": ["has no column 'label'; its columns are 'a', 'b'"],
        "label\nx\n": ["no feature columns"],
        "a,b,label\n": ["needs a header row and at least one data row"],
    }
    for text, words in cases.items():
        p.write_text(text)
        with pytest.raises(et.EdgetrainError) as info:
            et.data.read_csv(p, "label")
        for w in words:
            assert w in str(info.value), (text, str(info.value))
    p.write_text("a,b,label\n1,2,cat\n3,4,cow\n")
    with pytest.raises(et.EdgetrainError, match="class\\(es\\) 'cow' that the model was not"):
        et.data.read_csv(p, "label", classes=["cat", "dog"])
    with pytest.raises(et.EdgetrainError, match="5 values per example"):
        et.data.read_csv(p, "label", input_shape=[5])
    p.write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(et.EdgetrainError, match="not UTF-8"):
        et.data.read_csv(p, "b")


def test_parquet_reads_like_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x, y, _, _ = digits()
    cols = {f"p{i}": x.reshape(len(x), 64)[:, i] for i in range(64)}
    cols["label"] = np.array(WORDS)[y]
    pq.write_table(pa.table(cols), tmp_path / "d.parquet")
    ds = et.data.read(tmp_path / "d.parquet", "label", input_shape=[8, 8])
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(np.array(ds.classes)[ds.y], np.array(WORDS)[y])


@pytest.mark.parametrize("layout", ["gray [8, 8]", "chw [1, 16, 16]", "hwc [16, 16, 3]"])
def test_image_folder_is_read_in_the_models_layout(tmp_path: Path, layout: str) -> None:
    """PNGs of 16×16 (gray or RGB) in class folders, resized and laid out as the model takes
    them; the pixels are Pillow's own, scaled to [0, 1]."""
    from PIL import Image

    x, y, _, _ = digits()
    write_image_folder(tmp_path / "img", x[:60], y[:60], mode="RGB" if "hwc" in layout else "L")
    shape = {"gray [8, 8]": [8, 8], "chw [1, 16, 16]": [1, 16, 16],
             "hwc [16, 16, 3]": [16, 16, 3]}[layout]
    ds = et.data.read_image_folder(tmp_path / "img", shape)
    assert ds.x.shape == (60, *shape) and ds.x.dtype == np.float32
    assert ds.classes == sorted({WORDS[c] for c in y[:60]})
    first = sorted(os.listdir(tmp_path / "img" / ds.classes[0]))[0]
    with Image.open(tmp_path / "img" / ds.classes[0] / first) as im:
        mode = "RGB" if "hwc" in layout else "L"
        h, w = (shape[1], shape[2]) if "chw" in layout else (shape[0], shape[1])
        want = np.asarray(im.convert(mode).resize((w, h), Image.Resampling.BILINEAR),
                          dtype=np.float32) / 255
    np.testing.assert_array_equal(ds.x[0].reshape(want.shape), want)


def test_image_folder_trains_to_the_accuracy_of_the_arrays(tmp_path: Path) -> None:
    x, y, xt, yt = digits()
    write_image_folder(tmp_path / "train", x, y, size=8)
    write_image_folder(tmp_path / "test", xt, yt, size=8)
    train = et.data.read(tmp_path / "train", input_shape=[8, 8])
    test = et.data.read(tmp_path / "test", input_shape=[8, 8], classes=train.classes)
    np.testing.assert_allclose(np.sort(train.x.reshape(-1)), np.sort(x.reshape(-1)),
                               atol=1 / 255)
    m = _model()
    m.fit(train.x, train.y, epochs=5, progress=False)
    assert m.evaluate(test.x, test.y)["accuracy"] > 0.9
    (tmp_path / "test" / "zero" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(et.EdgetrainError, match=r"cannot read image .*broken.png"):
        et.data.read(tmp_path / "test", input_shape=[8, 8])
    (tmp_path / "bad" / "cow").mkdir(parents=True)
    with pytest.raises(et.EdgetrainError, match="holds no images"):
        et.data.read(tmp_path / "bad", input_shape=[8, 8])
    with pytest.raises(et.EdgetrainError, match="leaves the image size open"):
        et.data.read_image_folder(tmp_path / "train", ["h", "w"])
