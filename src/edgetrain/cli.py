"""``edgetrain`` command line: compile | info | train | infer | export | bench | demo | ..."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import helper

from .errors import EdgetrainError


def _load_npz(path: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise EdgetrainError(f"cannot read {path!r} as .npz: {e}") from e
    missing = [k for k in keys if k not in out]
    if missing:
        raise EdgetrainError(f"{path!r} lacks array(s) {missing}; it has {sorted(out)}")
    return out


def _optimizer(args: argparse.Namespace) -> Any:
    from . import optim

    name = args.optimizer.lower()
    kw: dict[str, Any] = {}
    if args.lr is not None:
        kw["lr"] = args.lr
    if args.clip_norm is not None:
        kw["clip_norm"] = args.clip_norm
    if name == "sgd":
        return optim.SGD(momentum=args.momentum, nesterov=args.nesterov,
                         weight_decay=args.weight_decay or 0.0, **kw)
    if name == "adam":
        return optim.Adam(weight_decay=args.weight_decay or 0.0, **kw)
    if name == "adamw":
        return optim.AdamW(weight_decay=0.01 if args.weight_decay is None else args.weight_decay,
                           **kw)
    raise EdgetrainError(f"unknown optimizer {args.optimizer!r}; choose sgd, adam or adamw")


def cmd_compile(args: argparse.Namespace) -> int:
    from .compile import compile as et_compile

    tm = et_compile(args.input, loss=args.loss, optimizer=_optimizer(args),
                    trainable=args.trainable or None, output=args.output_name,
                    labels=args.labels)
    path = tm.save(args.out)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.1f} KiB): "
          f"{len(tm.meta['trainable'])} trainable, {len(tm.meta['frozen'])} frozen tensors; "
          f"signatures {', '.join(sorted(tm.meta['signatures']))}")
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def info(path: str) -> dict[str, Any]:
    """What ``edgetrain info`` prints, as data."""
    from . import format as fmt

    proto = fmt.load_model(path)
    meta = fmt.read_meta(proto)
    sizes = {t.name: (int(np.prod(t.dims)) if t.dims else 1,
                      np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize)
             for t in proto.graph.initializer}

    def count(names: Sequence[str]) -> tuple[int, int]:
        n = sum(sizes[k][0] for k in names if k in sizes)
        b = sum(sizes[k][0] * sizes[k][1] for k in names if k in sizes)
        return n, b

    trainable, frozen, state = (count(meta["trainable"]), count(meta["frozen"]),
                                count(meta["state"]))
    return {
        "file": path, "file_bytes": os.path.getsize(path),
        "format_version": meta["format_version"], "producer": meta.get("producer"),
        "signatures": meta["signatures"],
        "trainable_tensors": len(meta["trainable"]), "trainable_params": trainable[0],
        "trainable_bytes": trainable[1],
        "frozen_tensors": len(meta["frozen"]), "frozen_params": frozen[0],
        "frozen_bytes": frozen[1],
        "optimizer_state_bytes": state[1],
        "checkpoint_bytes_approx": trainable[1] + state[1] + 8,
        "loss": meta.get("loss"), "optimizer": meta.get("optimizer"),
        "extra": {k: meta[k] for k in ("selection", "batch_norm", "lora") if k in meta},
    }


def cmd_info(args: argparse.Namespace) -> int:
    d = info(args.file)
    if args.json:
        print(json.dumps(d, indent=2, default=str))
        return 0
    print(f"{d['file']}: edgetrain format v{d['format_version']} ({d['producer']}), "
          f"{_human(d['file_bytes'])}")
    print("signatures:")
    for name, spec in sorted(d["signatures"].items()):
        ins = ", ".join(f"{s['name']}: {s['dtype']}{list(s['shape'])}" for s in spec["inputs"])
        outs = ", ".join(f"{s['name']}: {s['dtype']}{list(s['shape'])}" for s in spec["outputs"])
        extra = f"  [updates {len(spec.get('updates', {}))} tensors]" if spec.get("updates") \
            else ""
        print(f"  {name}({ins}) -> ({outs}){extra}")
    print(f"trainable: {d['trainable_tensors']} tensors, {d['trainable_params']:,} parameters "
          f"({_human(d['trainable_bytes'])})")
    print(f"frozen:    {d['frozen_tensors']} tensors, {d['frozen_params']:,} parameters "
          f"({_human(d['frozen_bytes'])})")
    print(f"optimizer state: {_human(d['optimizer_state_bytes'])}; checkpoint ≈ "
          f"{_human(d['checkpoint_bytes_approx'])}")
    loss, opt = d["loss"] or {}, d["optimizer"] or {}
    print(f"loss: {loss.get('name')}  optimizer: {opt.get('name')} "
          + " ".join(f"{k}={v}" for k, v in opt.items() if k != "name"))
    for k, v in d["extra"].items():
        print(f"{k}: {v}")
    return 0


def _model(args: argparse.Namespace) -> Any:
    from .runtime import load

    m = load(args.file, backend=args.backend)
    if getattr(args, "checkpoint", None) and os.path.exists(args.checkpoint):
        m.run("restore", checkpoint_path=args.checkpoint)
        print(f"restored {args.checkpoint} (step {m.step})")
    return m


def cmd_train(args: argparse.Namespace) -> int:
    data = _load_npz(args.data, ["x", "y"])
    m = _model(args)
    hist = m.fit(data["x"], data["y"], epochs=args.epochs, batch_size=args.batch_size,
                 lr=args.lr, seed=args.seed, progress=not args.no_progress,
                 on_nonfinite="skip" if args.skip_nonfinite else "raise")
    for e in range(len(hist["loss"])):
        line = f"epoch {e + 1}: " + "  ".join(f"{k} {v[e]:.4f}" for k, v in hist.history.items()
                                             if e < len(v))
        print(line)
    if hist.skipped_steps:
        print(f"skipped {hist.skipped_steps} non-finite step(s)")
    ckpt = args.checkpoint or os.path.splitext(args.file)[0] + ".ckpt.safetensors"
    m.run("save", checkpoint_path=ckpt)
    print(f"saved {ckpt} (step {m.step})")
    if args.plot:
        print(f"wrote {hist.plot(args.plot)}")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    data = _load_npz(args.data, ["x"])
    m = _model(args)
    out = m.predict(data["x"], batch_size=args.batch_size)
    if args.out:
        np.savez(args.out, **{m.meta["output"]: out})
        print(f"wrote {args.out} ({m.meta['output']}: {out.shape})")
    if m.meta.get("classification"):
        pred = np.argmax(out, axis=1)
        print(f"predictions: {pred[:20].tolist()}{' …' if len(pred) > 20 else ''}")
        if "y" in data:
            y = data["y"] if data["y"].ndim == 1 else np.argmax(data["y"], axis=1)
            print(f"accuracy: {float(np.mean(pred == y)):.4f}")
    elif not args.out:
        print(out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    m = _model(args)
    path = m.export(args.out)
    print(f"wrote {path}: plain inference ONNX with the current weights")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demos import seed

    return seed.run_from_args(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgetrain", description="On-device training with plain "
                                "ONNX: compile a model into one trainable file, train it anywhere.")
    p.add_argument("--version", action="version", version=f"edgetrain {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="inference ONNX -> trainable ONNX")
    c.add_argument("input")
    c.add_argument("-o", "--out", required=True)
    c.add_argument("--loss", default="cross_entropy",
                   choices=["cross_entropy", "mse", "l1", "huber", "bce_with_logits"])
    c.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    c.add_argument("--lr", type=float, default=None)
    c.add_argument("--momentum", type=float, default=0.0)
    c.add_argument("--nesterov", action="store_true")
    c.add_argument("--weight-decay", type=float, default=None)
    c.add_argument("--clip-norm", type=float, default=None)
    c.add_argument("--trainable", nargs="*", help="names or glob patterns (default: all)")
    c.add_argument("--output-name", default=None, help="model output that feeds the loss")
    c.add_argument("--labels", default="index", choices=["index", "onehot"])
    c.set_defaults(func=cmd_compile)

    i = sub.add_parser("info", help="signatures, parameter counts and sizes of a file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train", help="train a file on an .npz with arrays x and y")
    t.add_argument("file")
    t.add_argument("--data", required=True)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", default=None,
                   help="restored first if it exists; written after training")
    t.add_argument("--plot", default=None, help="write a loss/accuracy PNG here")
    t.add_argument("--skip-nonfinite", action="store_true")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    n = sub.add_parser("infer", help="run the infer signature on an .npz with array x")
    n.add_argument("file")
    n.add_argument("--data", required=True)
    n.add_argument("--checkpoint", default=None)
    n.add_argument("--batch-size", type=int, default=256)
    n.add_argument("-o", "--out", default=None, help="write outputs to this .npz")
    n.set_defaults(func=cmd_infer)

    e = sub.add_parser("export", help="plain inference ONNX with trained weights baked in")
    e.add_argument("file")
    e.add_argument("--checkpoint", default=None)
    e.add_argument("-o", "--out", required=True)
    e.set_defaults(func=cmd_export)

    for sp in (t, n, e):
        sp.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "reference"])

    d = sub.add_parser("demo", help="run a demo end to end (default: the seed walkthrough)")
    d.add_argument("which", nargs="?", default="seed", choices=["seed"],
                   help="seed (default); `edgetrain demo transfer|text …` run the other demos")
    from .demos import seed as _seed

    _seed.add_arguments(d)
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="time edgetrain's training step on the benchmark workloads")
    b.add_argument("--workloads", nargs="*", default=["W1", "W2", "W3"])
    b.add_argument("--steps", type=int, default=200)
    b.add_argument("--json", default=None)
    b.set_defaults(func=cmd_bench)

    for modname in ("web", "federated", "iree_export"):
        try:
            mod = importlib.import_module(f".{modname}", __package__)
        except ImportError:
            continue
        add = getattr(mod, "add_cli", None)
        if add is not None:
            add(sub)
    return p


def _version() -> str:
    from . import __version__

    return __version__


def _named_demo(argv: list[str]) -> Any:
    """``edgetrain demo NAME ARGS…`` hands ARGS to ``edgetrain.demos.NAME.main`` untouched."""
    if len(argv) >= 2 and argv[0] == "demo" and not argv[1].startswith("-") \
            and argv[1] != "seed":
        name = argv[1]
        if not name.isidentifier():
            raise EdgetrainError(f"unknown demo {name!r}")
        try:
            mod = importlib.import_module(f".demos.{name}", __package__)
        except ModuleNotFoundError as e:
            known = ["seed", "transfer", "text"]
            raise EdgetrainError(f"unknown demo {name!r}; demos: {', '.join(known)}") from e
        return lambda: int(mod.main(argv[2:]) or 0)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        demo = _named_demo(argv)
        if demo is not None:
            return int(demo())
    except EdgetrainError as e:
        print(f"edgetrain: error: {e}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EdgetrainError as e:
        print(f"edgetrain: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"edgetrain: error: {e.filename or e}: no such file", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
