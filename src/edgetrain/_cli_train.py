"""``edgetrain train`` and the data every command reads.

``train`` keeps the command line's promises (resume from FILE's default checkpoint, never write
over an input, fail before training on an unwritable output) and adds the training loop's
tools: validation (``--val-split``, ``--val-data``), ``--early-stopping``, the best checkpoint
(``--save-best``), learning-rate schedules, metrics and logs. ``--data`` is an ``.npz`` /
``.npy``, a CSV / TSV / Parquet table with ``--target COLUMN``, or a folder of class folders of
images (see :mod:`edgetrain.data`).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from . import _cli_files as files
from ._args import fraction, non_negative_int, positive_float, positive_int
from ._casting import conform
from ._cli_files import say
from .callbacks import ModelCheckpoint
from .errors import CheckpointError, EdgetrainError, InputError

__all__ = ["add_train", "cmd_train", "read_data"]

SCHEDULES = ("constant", "step", "cosine", "warmup", "plateau")


def add_train(sub: Any) -> argparse.ArgumentParser:
    t = sub.add_parser("train", help="train a file on data (.npz, CSV, Parquet, an image "
                       "folder); resumes from its checkpoint", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("file", help="trainable edgetrain file (.onnx); it is never modified")
    d = t.add_argument_group("data")
    d.add_argument("--data", required=True,
                   help="training data: an .npz with arrays x and y; a .csv/.tsv/.parquet "
                   "table (with --target); or a folder holding one folder of images per class")
    d.add_argument("--target", metavar="COLUMN", default=None,
                   help="the label column of a CSV or Parquet table (the other columns are the "
                   "features); words become classes in sorted order, kept for later runs")
    d.add_argument("--val-data", metavar="PATH", default=None,
                   help="validation data in any --data form; reported as val_loss, "
                   "val_accuracy, … after every epoch")
    d.add_argument("--val-split", type=_split_fraction, default=None, metavar="FRACTION",
                   help="hold out this fraction of --data for validation instead (a seeded "
                   "random split, the same in every run with the same --seed)")
    g = t.add_argument_group("training")
    g.add_argument("--epochs", type=positive_int, default=1, help="epochs to train (default 1)")
    g.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    g.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default: the one compiled into FILE)")
    g.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="learning-rate schedule over this run: constant (default); step "
                   "(×0.1 every third of the epochs); cosine (down to 0); warmup (linear "
                   "ramp over the first tenth of the steps); plateau (×0.1 after 2 epochs "
                   "without improvement of --monitor)")
    g.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the shuffling and of --val-split")
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip steps with a non-finite loss or gradient instead of stopping")
    g.add_argument("--metrics", nargs="+", default=[], metavar="NAME",
                   help="metrics to report besides loss and accuracy: precision, recall, f1, "
                   "top_K_accuracy (e.g. top_3_accuracy), mae, rmse")
    _add_stopping(t)
    _add_outputs(t)
    return t


def _add_stopping(t: argparse.ArgumentParser) -> None:
    s = t.add_argument_group("early stopping and the best checkpoint")
    s.add_argument("--monitor", default=None, metavar="METRIC",
                   help="the metric --early-stopping, --save-best and --schedule plateau "
                   "watch (default val_loss with validation data, else loss); any reported "
                   "name, e.g. val_accuracy (higher is better for accuracy, f1, precision "
                   "and recall, lower for the rest)")
    s.add_argument("--early-stopping", type=non_negative_int, nargs="?", const=3, default=None,
                   metavar="PATIENCE",
                   help="stop when --monitor has not improved for PATIENCE epochs (default 3)")
    s.add_argument("--save-best", nargs="?", const="", default=None, metavar="PATH",
                   help="keep the checkpoint of the best epoch by --monitor (default PATH: "
                   "FILE.best.safetensors); a rerun replaces it only with a better one")


def _add_outputs(t: argparse.ArgumentParser) -> None:
    o = t.add_argument_group("state and outputs")
    o.add_argument("--checkpoint", default=None,
                   help="restored first if it exists; written after training "
                   "(default: FILE.ckpt.safetensors next to FILE)")
    o.add_argument("--fresh", action="store_true",
                   help="start from FILE's weights; the old checkpoint is kept as a backup")
    o.add_argument("--weights-from", metavar="CHECKPOINT", default=None,
                   help="start from the weights of this checkpoint of the same network "
                   "(trained with any optimizer), with a fresh optimizer state")
    o.add_argument("--plot", default=None, help="write a loss/accuracy PNG here")
    o.add_argument("--csv-log", metavar="PATH", default=None,
                   help="append one row of metrics per epoch to this CSV file")
    o.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="write the metrics as TensorBoard scalars into this folder")
    o.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: only on a terminal; it redraws a few "
                   "times a second at most)")


def _split_fraction(text: str) -> float:
    value = float(fraction(text))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return value


# -- data --------------------------------------------------------------------------------------

def read_data(m: Any, path: str, target: str | None, classes: list[str] | None,
              need_y: bool, flag: str = "--data") -> Any:
    """``path`` in any form :func:`edgetrain.data.read` reads, checked and fitted to ``m``."""
    from .data import read

    inputs = m.signatures["infer"].inputs
    shape = list(inputs[0].shape[1:]) if len(inputs) == 1 else None
    ds = read(path, target, input_shape=shape, classes=classes, need_y=need_y)
    if ds.x.ndim == 0 or len(ds.x) == 0:
        raise EdgetrainError(f"{path!r}: array 'x' holds no samples (shape {list(ds.x.shape)})")
    if ds.y is not None and (ds.y.ndim == 0 or len(ds.y) != len(ds.x)):
        raise EdgetrainError(f"{path!r}: array 'y' has shape {list(ds.y.shape)} but 'x' has "
                             f"{len(ds.x)} samples")
    if ds.classes is not None:
        n = m._n_classes()
        if n is not None and len(ds.classes) > n:
            raise EdgetrainError(f"{flag} {path!r} has {len(ds.classes)} classes but the model "
                                 f"outputs {n} scores per example")
    if ds.classes is not None or ds.columns:  # the reader chose the dtypes: fit them quietly
        ds.x, ds.y = _fitted(m, ds, path, target)
    return ds


def _fitted(m: Any, ds: Any, path: str, target: str | None) -> tuple[Any, Any]:
    plan = m._input_plan(m._sigs["train"])
    name = m.signatures["infer"].inputs[0].name
    label = m.input_name("train", "label")
    where = f"{path!r} column {target!r}" if target else f"{path!r}"
    labels = m.meta.labels if m.meta.classification else None
    try:
        x = conform(ds.x, plan[name].dtype, plan[name].shape, name)[0]
        y = None if ds.y is None else conform(ds.y, plan[label].dtype, plan[label].shape,
                                              label, labels=labels)[0]
    except InputError as e:
        raise EdgetrainError(f"{where}: {e}") from e
    return x, y


# -- train -------------------------------------------------------------------------------------

def _train_paths(args: argparse.Namespace) -> tuple[str, str | None]:
    """The checkpoint ``train`` writes and the best checkpoint (if asked), after checking
    every output it will write."""
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise EdgetrainError("--plot needs matplotlib: pip install 'edgetrain[plot]'") from e
    if args.val_split and args.val_data:
        raise EdgetrainError("give --val-split or --val-data, not both")
    default = files.default_checkpoint(args.file)
    ckpt = args.checkpoint or default
    best = None if args.save_best is None else (args.save_best or
                                                 files.best_checkpoint(args.file))
    protected = {"FILE": args.file, "--data": args.data, "--val-data": args.val_data,
                 "--weights-from": args.weights_from}
    if not files.same_file(ckpt, default):
        protected.update({"the default checkpoint": default,
                          "the progress file": files.progress_path(default)})
    outputs = {"the checkpoint": ckpt, "its progress file": files.progress_path(ckpt),
               "--plot": args.plot, "--save-best": best,
               "the best checkpoint's record": files.progress_path(best) if best else None,
               "--csv-log": args.csv_log}
    files.refuse_overwrite(outputs, protected)
    if args.tensorboard:
        files.refuse_folder_holding("--tensorboard", args.tensorboard, protected)
        outputs["--tensorboard"] = os.path.join(args.tensorboard, "events")
    for label, path in outputs.items():
        if path:
            files.writable(path, label)
    if args.weights_from and not os.path.lexists(args.weights_from):
        raise EdgetrainError(f"--weights-from {args.weights_from!r} does not exist")
    return ckpt, best


def _start(m: Any, args: argparse.Namespace, ckpt: str) -> tuple[bool, dict[str, Any] | None]:
    """Restore what training starts from; (resuming, the checkpoint's progress record)."""
    resume = os.path.lexists(ckpt) and not args.fresh and not args.weights_from
    if resume:
        try:
            m.run("restore", checkpoint_path=ckpt)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; pass --fresh to start over, or --weights-from "
                                  f"{ckpt} to keep its weights with a fresh optimizer (the "
                                  "old checkpoint is kept as a backup)") from e
        return True, files.read_progress_doc(ckpt, m.step)
    if args.weights_from:
        m.restore(args.weights_from, parts=("weights",))
        say(f"starting from the weights of {args.weights_from} with a fresh optimizer state")
        return False, files.read_progress_doc(args.weights_from, None)
    say(f"starting from the weights stored in {args.file}"
        + (" (--fresh)" if args.fresh and os.path.lexists(ckpt) else ""))
    default = files.default_checkpoint(args.file)
    if args.checkpoint and not args.fresh and os.path.lexists(default):
        say(f"note: --checkpoint {args.checkpoint} does not exist yet: training starts "
            f"from FILE's weights, not from its default checkpoint {default}")
    return False, None


def _first_epoch(m: Any, ckpt: str, doc: dict[str, Any] | None, resume: bool, n: int,
                 batch_size: int) -> int:
    """The number of epochs the state already holds (said when resuming)."""
    if not resume:
        return 0
    epoch = doc.get("epoch") if doc else None
    note = ""
    if not isinstance(epoch, int) or epoch < 0:  # no record, or a stale one: estimate
        epoch = m.step // max(1, -(-n // batch_size))
        note = ", estimated from the step count"
    say(f"resuming from {ckpt} (step {m.step}, epoch {epoch}{note}); --fresh starts over")
    return epoch


def cmd_train(args: argparse.Namespace) -> int:
    from .training import load

    ckpt, best = _train_paths(args)
    m = load(args.file, backend=args.backend, **files.backend_options(args))
    resume, doc = _start(m, args, ckpt)
    classes = files.read_classes(doc)
    data = read_data(m, args.data, args.target, classes, True)
    classes = data.classes or classes
    val = None if not args.val_data else read_data(m, args.val_data, args.target, classes,
                                                   True, "--val-data")
    start = _first_epoch(m, ckpt, doc, resume, len(data.x), args.batch_size)
    if data.classes and not resume:
        say("classes: " + ", ".join(f"{i}={c}" for i, c in enumerate(data.classes[:20]))
            + (" …" if len(data.classes) > 20 else ""))
    monitor = args.monitor or ("val_loss" if args.val_split or val is not None else "loss")
    fresh_start = args.fresh or bool(args.weights_from)
    cbs, best_cb = _callbacks(args, monitor, best, fresh_start, classes, resume)
    hist = m.fit(data.x, data.y, epochs=args.epochs, batch_size=args.batch_size,
                 lr=args.lr, seed=args.seed, progress=args.progress,
                 on_nonfinite="skip" if args.skip_nonfinite else "raise",
                 validation_data=None if val is None else (val.x, val.y),
                 validation_split=args.val_split or 0.0, callbacks=cbs,
                 metrics=args.metrics, initial_epoch=start)
    _report(hist, start, args, monitor, best, best_cb)
    if not resume and os.path.lexists(ckpt):
        say(f"kept the previous checkpoint as {files.keep_backup(ckpt)}")
    with files.writing(ckpt, "checkpoint"):
        m.run("save", checkpoint_path=ckpt)
    end = start + hist.epochs
    files.write_progress(ckpt, m.step, end, {"classes": classes} if classes else None)
    say(f"saved {ckpt} (step {m.step}, epoch {end})")
    if args.plot:
        with files.writing(args.plot, "plot"):
            say(f"wrote {hist.plot(args.plot)}")
    return 0


def _callbacks(args: argparse.Namespace, monitor: str, best: str | None, fresh_start: bool,
               classes: list[str] | None, resume: bool) -> tuple[list[Any], Any]:
    from . import callbacks as cb

    found: list[Any] = []
    if args.early_stopping is not None:
        found.append(cb.EarlyStopping(monitor, patience=args.early_stopping))
    if args.schedule == "plateau":
        found.append(cb.ReduceLROnPlateau(monitor, factor=0.1, patience=2))
    elif args.schedule == "step":
        found.append(cb.LearningRateScheduler(cb.StepDecay(every=max(1, args.epochs // 3))))
    elif args.schedule == "cosine":
        found.append(cb.LearningRateScheduler(cb.CosineDecay()))
    elif args.schedule == "warmup":
        found.append(cb.LearningRateScheduler(cb.LinearWarmup()))
    best_cb = None
    if best is not None:
        best_cb = _BestCheckpoint(best, monitor, _previous_best(best, monitor, fresh_start),
                                  classes)
        found.append(best_cb)
    if args.csv_log:
        found.append(cb.CSVLogger(args.csv_log, append=resume))
    if args.tensorboard:
        found.append(cb.TensorBoard(args.tensorboard))
    return found, best_cb


def _previous_best(best: str, monitor: str, fresh_start: bool) -> float | None:
    """The value the best checkpoint of an earlier run reached, which this run must beat
    (or, when starting over, None: that checkpoint is kept as a backup)."""
    if not os.path.lexists(best):
        return None
    if fresh_start:
        say(f"kept the previous best checkpoint as {files.keep_backup(best)}")
        return None
    doc = files.read_progress_doc(best, None)
    value = doc.get("best") if doc and doc.get("monitor") == monitor else None
    if isinstance(value, (int, float)) and math.isfinite(value):
        say(f"the best checkpoint {best} so far has {monitor} {value:.4f}")
        return float(value)
    return None


class _BestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that records the monitored value (and the class names) next to the
    checkpoint, so that a rerun knows the value to beat."""

    def __init__(self, path: str, monitor: str, initial_best: float | None,
                 classes: list[str] | None) -> None:
        super().__init__(path, monitor, initial_best=initial_best)
        self.classes = classes

    def on_save(self, path: str, epoch: int, logs: Any) -> None:
        extra: dict[str, Any] = {"monitor": self.watch.monitor, "best": self.best}
        if self.classes:
            extra["classes"] = self.classes
        files.write_progress(path, self.loop.model.step, epoch + 1, extra)


def _report(hist: Any, start: int, args: argparse.Namespace, monitor: str, best: str | None,
            best_cb: Any) -> None:
    for e in range(hist.epochs):
        say(f"epoch {start + e + 1}: " + "  ".join(
            f"{k} {v[e]:.4g}" if k == "lr" else f"{k} {v[e]:.4f}"
            for k, v in hist.history.items() if e < len(v)))
    if hist.skipped_steps:
        say(f"skipped {hist.skipped_steps} non-finite step(s)")
    if hist.stopped_epoch is not None:
        say(f"early stopping: {monitor} did not improve for {args.early_stopping} "
            f"epoch(s); stopped after epoch {hist.stopped_epoch + 1}")
    for note in hist.notes:
        say(note)
    if best_cb is not None and best_cb.best_epoch is not None:
        say(f"saved the best checkpoint {best} (epoch {best_cb.best_epoch + 1}, "
            f"{monitor} {best_cb.best:.4f})")
    elif best is not None:
        say(f"the best checkpoint {best} is unchanged: no epoch beat its {monitor}")
