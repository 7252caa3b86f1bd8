"""edgetrain's file on IREE (iree-base-runtime, host modules): ``backend="iree"``."""

from __future__ import annotations

from _common import main
from edgetrain_worker import EdgetrainPeer


class Peer(EdgetrainPeer):
    name = "iree"
    backend = "iree"


if __name__ == "__main__":
    main(Peer)
