"""edgetrain's file trained in a browser: the JS package on onnxruntime-web's wasm build, in
headless Chromium; see _js.py."""

from __future__ import annotations

from _common import main
from _js import JsPeer


class Peer(JsPeer):
    name = "ort-web"
    kind = "web"


if __name__ == "__main__":
    main(Peer)
