"""edgetrain's file trained by tract: the edgetrain worker with ``backend="tract"``."""

from __future__ import annotations

from _common import main
from edgetrain_worker import EdgetrainPeer


class Peer(EdgetrainPeer):
    name = "tract"
    backend = "tract"


if __name__ == "__main__":
    main(Peer)
