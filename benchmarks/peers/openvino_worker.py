"""edgetrain's file on OpenVINO (CPU plugin, float32): ``backend="openvino"``."""

from __future__ import annotations

from _common import main
from edgetrain_worker import EdgetrainPeer


class Peer(EdgetrainPeer):
    name = "openvino"
    backend = "openvino"


if __name__ == "__main__":
    main(Peer)
