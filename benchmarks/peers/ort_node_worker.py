"""edgetrain's file trained in Node.js: the JS package on onnxruntime-node (CPU); see _js.py."""

from __future__ import annotations

from _common import main
from _js import JsPeer


class Peer(JsPeer):
    name = "ort-node"
    kind = "node"


if __name__ == "__main__":
    main(Peer)
