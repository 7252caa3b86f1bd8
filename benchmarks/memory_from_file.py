"""Peak RSS of a fresh process that loads a workload's trainable file by path and trains a few
steps: what a device app does. Run it once to compile and save the file, then again (each run
a fresh process) to measure; compare two versions of edgetrain by running both on one machine.

    python benchmarks/memory_from_file.py W7      # compiles /tmp/edgetrain-W7.onnx
    python benchmarks/memory_from_file.py W7      # peak MiB, RSS after loading, last loss

The process also imports torch to build the workload's batches, so compare differences between
runs, not the level with the benchmark's own memory columns (benchmarks/run.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile

import edgetrain as et
from edgetrain import bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", help="W1 … W8")
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    w = bench.workload(args.workload)
    path = os.path.join(tempfile.gettempdir(), f"edgetrain-{args.workload}.onnx")
    if not os.path.exists(path):
        bench.compile_workload(w).save(path)
        print(f"compiled {path}; run again (a fresh process) to measure")
        return
    m = et.load(path)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    loss = float("nan")
    for i in range(args.steps):
        x, y = w.batches[i % len(w.batches)]
        loss = float(m.run("train", **bench.feeds(w, x), y=y)["loss"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"{args.workload}: peak {peak} MiB, after loading {loaded} MiB, last loss {loss:.6f}")


if __name__ == "__main__":
    main()
