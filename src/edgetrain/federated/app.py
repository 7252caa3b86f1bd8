"""Module-level Flower apps for a real deployment (SuperLink / SuperNodes).

A Flower App names its components as ``module:attribute``; the app that
``edgetrain federated server`` submits points here. The server side reads its settings from
the run config (``ServerSettings.from_run_config``), each device reads ``model`` and ``data``
from its SuperNode's ``--node-config``. The variants carry the client-side mods that DP
clipping and SecAgg+ need.
"""

from __future__ import annotations

from ._client import make_client_app
from ._server import make_server_app

server_app = make_server_app()
client_app = make_client_app()
client_app_dp = make_client_app(dp="client")
client_app_secagg = make_client_app(secagg=True)
client_app_secagg_dp = make_client_app(dp="client", secagg=True)


def client_component(dp: str = "none", secagg: bool = False) -> str:
    """The ``module:attribute`` of the ClientApp matching the server's DP/SecAgg+ choice."""
    name = "client_app"
    if secagg:
        name += "_secagg"
    if dp == "client":
        name += "_dp"
    return f"{__name__}:{name}"


SERVER_COMPONENT = f"{__name__}:server_app"
