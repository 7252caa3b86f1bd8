"""``edgetrain`` command line: compile | info | train | infer | export | bench | demo | ...

Every command either does its job or prints one ``edgetrain: error: …`` line and exits with
status 2, with every file it was given unchanged: no command writes over one of its inputs,
and training is never thrown away by a rerun (``train`` resumes from FILE's checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import helper

from . import _cli_files as files
from . import format as fmt
from ._args import (
    Parser,
    fraction,
    input_shape,
    non_negative_float,
    positive_float,
    positive_int,
)
from ._casting import DataConversionWarning
from ._cli_train import add_train, cmd_train, read_data
from ._io import read_regular_file
from .errors import CheckpointError, EdgetrainError, FormatError

_say = files.say


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
    from ._api import compile as et_compile

    files.refuse_overwrite({"-o": args.out}, {"IN": args.input})
    files.writable(args.out, "-o")
    try:
        proto = fmt.load_model(read_regular_file(args.input, "model file"))
    except FormatError as e:
        raise FormatError(f"{args.input!r}: {e}") from e
    if any(p.key == fmt.META_KEY for p in proto.metadata_props):
        raise EdgetrainError(f"{args.input!r} is already a trainable edgetrain file; train it "
                             f"(`edgetrain train {args.input} --data …`) or compile the "
                             "inference model it came from")
    tm = et_compile(proto, loss=args.loss, optimizer=_optimizer(args),
                    trainable=args.trainable or None, output=args.output_name,
                    labels=args.labels, batch_norm=args.batch_norm,
                    input_shapes=dict(args.input_shape) if args.input_shape else None)
    with files.writing(args.out, "-o"):
        path = tm.save(args.out)
    for note in tm.notes:
        _say(f"note: {note}")
    _say(f"wrote {path} ({os.path.getsize(path) / 1024:.1f} KiB): "
          f"{len(tm.meta.trainable)} trainable, {len(tm.meta.frozen)} frozen tensors; "
          f"signatures {', '.join(sorted(tm.meta.signatures))}")
    stale = files.default_checkpoint(args.out)
    if os.path.lexists(stale):
        _say(f"note: {stale} (from an earlier run) exists; `edgetrain train` resumes from it "
              "and `infer`/`export` use it — pass --fresh to train from the new weights")
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
    from .format import validate

    data = fmt.read_model_bytes(path)  # a regular file only: no FIFO, no device
    proto = fmt.load_model(data)
    meta = fmt.read_metadata(proto)
    validate(proto, meta)  # what is printed was checked, as for et.load
    sizes = {t.name: (int(np.prod(t.dims)) if t.dims else 1,
                      np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize)
             for t in fmt.stored_tensors(proto, meta)}

    def count(names: Sequence[str]) -> tuple[int, int]:
        n = sum(sizes[k][0] for k in names if k in sizes)
        b = sum(sizes[k][0] * sizes[k][1] for k in names if k in sizes)
        return n, b

    trainable, frozen, state = count(meta.trainable), count(meta.frozen), count(meta.state)
    extra = {"selection": meta.selection, "lora": meta.lora}
    return {
        "file": path, "file_bytes": len(data),
        "format_version": meta.format_version, "producer": meta.producer,
        "signatures": {k: s.to_json() for k, s in meta.signatures.items()},
        "trainable_tensors": len(meta.trainable), "trainable_params": trainable[0],
        "trainable_bytes": trainable[1],
        "frozen_tensors": len(meta.frozen), "frozen_params": frozen[0],
        "frozen_bytes": frozen[1],
        "optimizer_state_bytes": state[1],
        "checkpoint_bytes_approx": trainable[1] + state[1] + 8,
        "loss": meta.loss.to_json(), "optimizer": meta.optimizer.to_json(),
        "extra": {k: v for k, v in extra.items() if v is not None},
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


def _checkpoint_to_read(args: argparse.Namespace) -> tuple[str | None, bool]:
    """The checkpoint ``infer``/``export``/``export-web`` start from, and whether by default.

    ``--checkpoint`` must exist: silently using the untrained weights instead would hand the
    user a model that looks fine and predicts nothing. Without it, the default checkpoint that
    ``train`` writes is used when present (``--no-checkpoint`` ignores it).
    """
    if args.checkpoint:
        if not os.path.lexists(args.checkpoint):
            raise EdgetrainError(f"--checkpoint {args.checkpoint!r} does not exist")
        return args.checkpoint, False
    default = files.default_checkpoint(args.file)
    if not args.no_checkpoint and os.path.lexists(default):
        return default, True
    return None, False


def _protected(args: argparse.Namespace) -> dict[str, str | None]:
    """Paths a command reading FILE must never write: FILE, its data and training state."""
    default = files.default_checkpoint(args.file)
    paths = {"FILE": args.file, "--data": getattr(args, "data", None),
             "--checkpoint": args.checkpoint, "the default checkpoint": default,
             "the progress file": files.progress_path(default)}
    if args.checkpoint:
        paths["the checkpoint's progress file"] = files.progress_path(args.checkpoint)
    return paths


def _epoch_note(ckpt: str, step: int) -> str:
    epoch = files.read_progress(ckpt, step)
    return "" if epoch is None else f", epoch {epoch}"


def _model(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None]:
    """Load FILE with the checkpoint :func:`_checkpoint_to_read` picks, and say which; with
    the checkpoint's progress record (its class names).

    A checkpoint of the same network written with another optimizer (FILE recompiled) gives
    its weights: inference needs no optimizer state.
    """
    from .training import load

    ckpt, by_default = _checkpoint_to_read(args)
    m = load(args.file, backend=args.backend, **files.backend_options(args))
    if ckpt is None:
        _say(f"no checkpoint: using the weights stored in {args.file}")
        return m, None
    how = "the default checkpoint" if by_default else "checkpoint"
    hint = "; --no-checkpoint uses the weights stored in FILE" if by_default else ""
    try:
        m.run("restore", checkpoint_path=ckpt)
    except CheckpointError as e:
        try:
            m.restore(ckpt, parts=("weights",))
        except CheckpointError:
            raise e from None
        _say(f"using the weights of {how} {ckpt} (written with another optimizer or "
             f"selection of trainable weights){hint}")
        return m, files.read_progress_doc(ckpt, None)
    _say(f"using {how} {ckpt} (step {m.step}{_epoch_note(ckpt, m.step)}){hint}")
    return m, files.read_progress_doc(ckpt, m.step)


def cmd_infer(args: argparse.Namespace) -> int:
    out_path = args.out
    if out_path and not out_path.endswith(".npz"):
        out_path += ".npz"  # as np.savez names it
    files.refuse_overwrite({"-o": out_path}, _protected(args))
    if out_path:
        files.writable(out_path, "-o")
    m, doc = _model(args)
    classes = files.read_classes(doc)
    data = read_data(m, args.data, args.target, classes, need_y=False)
    classes = classes or data.classes
    out = m.predict(data.x, batch_size=args.batch_size)
    if out_path:
        buf = io.BytesIO()
        np.savez(buf, **{m.meta.output: out})
        with files.writing(out_path, "-o"):
            fmt.atomic_write(out_path, buf.getvalue())
        _say(f"wrote {out_path} ({m.meta.output}: {out.shape})")
    if m.meta.classification:
        pred = np.argmax(out, axis=1)
        shown = [classes[p] if classes and p < len(classes) else int(p) for p in pred[:20]]
        _say(f"predictions: {shown}{' …' if len(pred) > 20 else ''}")
        if data.y is not None:
            y = data.y if data.y.ndim == 1 else np.argmax(data.y, axis=1)
            _say(f"accuracy: {float(np.mean(pred == y)):.4f}")
    elif not out_path:
        _say(out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    files.refuse_overwrite({"-o": args.out}, _protected(args))
    files.writable(args.out, "-o")
    m, _ = _model(args)
    with files.writing(args.out, "-o"):
        path = m.export(args.out)
    _say(f"wrote {path}: plain inference ONNX with the current weights")
    return 0


def _guard_export_web(sub: Any) -> None:
    """``export-web``: the same checkpoint rules as ``export``, and no writing over inputs."""
    p = sub.choices.get("export-web")
    if p is None:
        return
    inner = p.get_default("func")
    with contextlib.suppress(argparse.ArgumentError):  # unless the command has it already
        p.add_argument("--no-checkpoint", action="store_true",
                       help="ignore FILE's default checkpoint; export the weights stored in FILE")

    def run(args: argparse.Namespace) -> int:
        ckpt, by_default = _checkpoint_to_read(args)
        files.refuse_folder_holding("OUT_DIR", args.out_dir, _protected(args))
        files.writable(os.path.join(args.out_dir, "x"), "OUT_DIR")
        if by_default:
            _say(f"using the default checkpoint {ckpt}; --no-checkpoint exports the weights "
                  "stored in FILE")
        args.checkpoint = ckpt
        return int(inner(args) or 0)

    p.set_defaults(func=run)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demos import seed

    return seed.run_from_args(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    if args.json:  # before the benchmark runs for minutes, not after
        files.refuse_overwrite({"--json": args.json}, {})
        files.writable(args.json, "--json")
    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="edgetrain", description="On-device training with plain ONNX: compile a "
               "model into one trainable file, train it anywhere.")
    p.add_argument("--version", action="version", version=f"edgetrain {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_compile(sub)

    i = sub.add_parser("info", help="signatures, parameter counts and sizes of a file")
    i.add_argument("file", help="trainable edgetrain file (.onnx)")
    i.add_argument("--json", action="store_true", help="print the details as JSON")
    i.set_defaults(func=cmd_info)

    add_train(sub).set_defaults(func=cmd_train)
    _add_infer_export(sub)

    d = sub.add_parser("demo", help="run a demo end to end (default: the seed walkthrough)")
    d.add_argument("which", nargs="?", default="seed", choices=["seed"],
                   help="seed (default); `edgetrain demo transfer|text …` run the other demos")
    from .demos import seed as _seed

    _seed.add_arguments(d)
    d.set_defaults(func=cmd_demo)

    from .bench import workload_name

    b = sub.add_parser("bench", help="time edgetrain's training step on the benchmark workloads")
    b.add_argument("--workloads", nargs="*", type=workload_name, default=["W1", "W2", "W3"],
                   help="workloads to time: W1 ... W8 (default W1 W2 W3)")
    b.add_argument("--steps", type=positive_int, default=200,
                   help="timed steps per workload (default 200)")
    b.add_argument("--json", default=None, help="also write the results to this JSON file")
    b.set_defaults(func=cmd_bench)

    for modname in ("web", "federated", "iree_export"):
        try:
            mod = importlib.import_module(f".{modname}", __package__)
        except ImportError:
            continue
        add = getattr(mod, "add_cli", None)
        if add is not None:
            add(sub)
    _guard_export_web(sub)
    return p


def _add_infer_export(sub: Any) -> None:
    n = sub.add_parser("infer", help="run the infer signature on data (.npz, .npy, CSV, "
                       "Parquet, an image folder)")
    n.add_argument("file", help="trainable edgetrain file (.onnx)")
    n.add_argument("--data", required=True, help="an .npz with array x (and y for the "
                   "accuracy), an .npy holding x, a .csv/.tsv/.parquet table, or a folder of "
                   "class folders of images")
    n.add_argument("--target", metavar="COLUMN", default=None,
                   help="the label column of a table, for the accuracy (the other columns "
                   "are the features)")
    n.add_argument("--batch-size", type=positive_int, default=256,
                   help="samples per inference call (default 256)")
    n.add_argument("-o", "--out", default=None, help="write outputs to this .npz")
    n.set_defaults(func=cmd_infer)

    e = sub.add_parser("export", help="plain inference ONNX with trained weights baked in")
    e.add_argument("file", help="trainable edgetrain file (.onnx)")
    e.add_argument("-o", "--out", required=True, help="the plain inference .onnx to write")
    e.set_defaults(func=cmd_export)

    for sp in (n, e):
        sp.add_argument("--checkpoint", default=None, help="restore this checkpoint first "
                        "(default: FILE's checkpoint written by `train`, if there is one)")
        sp.add_argument("--no-checkpoint", action="store_true",
                        help="ignore FILE's default checkpoint; use the weights stored in FILE")
    for sp in (sub.choices["train"], n, e):
        sp.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "reference"],
                        help="the runtime that executes the graphs (default onnxruntime)")
        sp.add_argument("--no-graph-optimizations", action="store_true",
                        help="onnxruntime: run the graphs unoptimized (when its graph "
                             "optimizer fails on a file)")


def _add_compile(sub: Any) -> None:
    c = sub.add_parser("compile", help="inference ONNX -> trainable ONNX")
    c.add_argument("input", help="the inference model (.onnx)")
    c.add_argument("-o", "--out", required=True, help="the trainable .onnx to write")
    c.add_argument("--loss", default="cross_entropy",
                   choices=["cross_entropy", "mse", "l1", "huber", "bce_with_logits"],
                   help="loss on the model output (default cross_entropy)")
    c.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"],
                   help="optimizer (default sgd)")
    c.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default: the optimizer's)")
    c.add_argument("--momentum", type=fraction, default=0.0, help="SGD momentum in [0, 1)")
    c.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum")
    c.add_argument("--weight-decay", type=non_negative_float, default=None,
                   help="weight decay (default 0; AdamW 0.01)")
    c.add_argument("--clip-norm", type=positive_float, default=None,
                   help="clip the global gradient norm to this value")
    c.add_argument("--trainable", nargs="*", help="names or glob patterns (default: all)")
    c.add_argument("--output-name", default=None, help="model output that feeds the loss")
    c.add_argument("--labels", default="index", choices=["index", "onehot"],
                   help="label format of y (default index)")
    c.add_argument("--batch-norm", default="frozen", choices=["frozen", "train"],
                   help="batch norm on running statistics (frozen, default) or on the batch's")
    c.add_argument("--input-shape", type=input_shape, action="append", metavar="NAME=D,D,…",
                   help="fix an input's sizes the model leaves open, e.g. x=batch,3,224,224 "
                        "(a name keeps a dim dynamic); repeat for several inputs")
    c.set_defaults(func=cmd_compile)


def _version() -> str:
    from . import __version__

    return __version__


#: Demos run by ``edgetrain demo NAME`` besides the seed walkthrough (modules of .demos).
NAMED_DEMOS = ("transfer", "text")


def _named_demo(argv: list[str]) -> Any:
    """``edgetrain demo NAME ARGS…`` hands ARGS to ``edgetrain.demos.NAME.main`` untouched."""
    if len(argv) >= 2 and argv[0] == "demo" and not argv[1].startswith("-") \
            and argv[1] != "seed":
        name = argv[1]
        if name not in NAMED_DEMOS:
            raise EdgetrainError(f"unknown demo {name!r}; demos: seed, {', '.join(NAMED_DEMOS)}")
        mod = importlib.import_module(f".demos.{name}", __package__)
        return lambda: int(mod.main(argv[2:]) or 0)
    return None


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: Any = None, line: str | None = None) -> None:
    """Data conversions as one ``note:`` line on stdout (stderr is for the one error line);
    other warnings as Python shows them."""
    if issubclass(category, DataConversionWarning):
        _say(f"note: {message}")
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        warnings.showwarning = shown


def _main(argv: list[str]) -> int:
    try:
        demo = _named_demo(argv)
        if demo is not None:
            return int(demo())
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except EdgetrainError as e:
        return _fail(str(e))
    except BrokenPipeError:  # the reader of our output went away (`| head`): not an error
        _say("")
        return 1
    except FileNotFoundError as e:
        return _fail(f"{e.filename or e}: no such file")
    except OSError as e:
        if e.filename is None:  # not about a path the user gave: a bug, show it
            raise
        return _fail(f"{e.filename}: {e.strerror or e}")
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message: str, status: int = 2) -> int:
    """One line on stderr, whatever the message holds (a checker's report spans lines)."""
    print(f"edgetrain: error: {' '.join(message.split())}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
