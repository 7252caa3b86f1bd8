"""The input gradient of a stride-1 3×3 convolution two ways on onnxruntime (one thread):
ConvTranspose(dY, W), what the Conv rule emits for group 1, against Conv(dY, flip(Wᵀ)) with
pads k − 1 − p, the full correlation. Shapes: ResNet-18's at 64×64 (W7), batch 16, and its
stem's 3 input channels.

    python benchmarks/conv_input_grad.py
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h

SHAPES = [(16, 64, 64, 16), (16, 128, 128, 8), (16, 256, 256, 4), (16, 512, 512, 2),
          (16, 3, 64, 64)]  # N, C (X's channels), M (dY's channels), H = W


def model(kind: str, c: int, m: int, size: int, k: int = 3, p: int = 1) -> onnx.ModelProto:
    """dX of Conv(X[N, c, size, size], W[m, c, k, k], pads p, stride 1) from dY."""
    inits = []
    if kind == "ConvTranspose":
        nodes = [h.make_node("ConvTranspose", ["dy", "w"], ["dx"], pads=[p] * 4,
                             kernel_shape=[k, k])]
    else:
        nodes = [h.make_node("Transpose", ["w"], ["wt"], perm=[1, 0, 2, 3]),
                 h.make_node("Slice", ["wt", "st", "en", "ax", "stp"], ["wf"]),
                 h.make_node("Conv", ["dy", "wf"], ["dx"], pads=[k - 1 - p] * 4)]
        inits = [h.make_tensor("st", T.INT64, [2], [-1, -1]),
                 h.make_tensor("en", T.INT64, [2], [-2**63, -2**63]),
                 h.make_tensor("ax", T.INT64, [2], [2, 3]),
                 h.make_tensor("stp", T.INT64, [2], [-1, -1])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("dy", T.FLOAT, ["N", m, size, size]),
                                  h.make_tensor_value_info("w", T.FLOAT, [m, c, k, k])],
                     [h.make_tensor_value_info("dx", T.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 18)])


def main() -> None:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    rng = np.random.default_rng(0)
    for n, c, m, size in SHAPES:
        feeds = {"dy": rng.standard_normal((n, m, size, size)).astype(np.float32),
                 "w": rng.standard_normal((m, c, 3, 3)).astype(np.float32)}
        sessions = {kind: ort.InferenceSession(model(kind, c, m, size).SerializeToString(), so,
                                               providers=["CPUExecutionProvider"])
                    for kind in ("ConvTranspose", "Conv")}
        a, b = (s.run(None, feeds)[0] for s in sessions.values())
        err = float(np.abs(a - b).max() / np.abs(a).max())
        times: dict[str, list[float]] = {kind: [] for kind in sessions}
        for _ in range(7):  # interleaved rounds
            for kind, s in sessions.items():
                t0 = time.perf_counter()
                for _ in range(5):
                    s.run(None, feeds)
                times[kind].append((time.perf_counter() - t0) / 5 * 1e3)
        ct, cv = (float(np.median(t)) for t in times.values())
        print(f"N{n} C{c} M{m} {size}x{size}: ConvTranspose {ct:.2f} ms, Conv(flipped W) "
              f"{cv:.2f} ms, ratio {cv / ct:.2f}, max rel diff {err:.1e}")


if __name__ == "__main__":
    main()
