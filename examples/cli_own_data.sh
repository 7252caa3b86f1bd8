#!/usr/bin/env bash
# The command line on your own data: a CSV table and a folder of images, one sub-folder per class.
#
#     pip install -e '.[demo,data]'
#     bash examples/cli_own_data.sh [OUT_DIR]
#
# The first step writes stand-ins for what you have: an ONNX model (base.onnx, the seed MLP on
# 8x8 grey images), digits.csv (64 pixel columns and a 'label' column of class names) and
# images/<class>/*.png. Replace them with your own files; the commands stay the same.
set -euo pipefail
out="${1:-cli-example}"
mkdir -p "$out" && cd "$out"

python - <<'PY'
import os, numpy as np, onnx
from PIL import Image
from edgetrain.demos import digits, seed_mlp
names = "zero one two three four five six seven eight nine".split()
x, y, xt, yt = digits()
onnx.save(seed_mlp(), "base.onnx")
with open("digits.csv", "w") as f:
    f.write(",".join([f"p{i}" for i in range(64)] + ["label"]) + "\n")
    for xi, yi in zip(x, y):
        f.write(",".join([*(f"{v:.4f}" for v in xi.reshape(-1)), names[yi]]) + "\n")
for i, (img, label) in enumerate(zip(xt, yt)):  # 32x32 PNGs; train resizes them to 8x8
    os.makedirs(f"images/{names[label]}", exist_ok=True)
    Image.fromarray((img * 255).round().astype(np.uint8), "L").resize((32, 32)).save(
        f"images/{names[label]}/{i}.png")
PY

# A table: hold out 20 %, stop when val_loss stops improving, keep the best epoch's checkpoint.
edgetrain compile base.onnx -o table.onnx --optimizer adam --lr 0.01
edgetrain train table.onnx --data digits.csv --target label --val-split 0.2 --early-stopping \
    --save-best --epochs 60 --no-progress
edgetrain infer table.onnx --data digits.csv --target label --checkpoint table.best.safetensors

# An image folder: a cosine learning-rate schedule and an F1 score per epoch.
edgetrain compile base.onnx -o images.onnx --lr 0.05 --momentum 0.9
edgetrain train images.onnx --data images/ --epochs 10 --schedule cosine --metrics f1 \
    --no-progress
edgetrain infer images.onnx --data images/
edgetrain export images.onnx -o personal.onnx     # plain inference model, trained weights
