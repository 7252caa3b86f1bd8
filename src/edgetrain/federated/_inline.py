"""A sequential, in-process engine for Flower apps: Flower's ``Grid`` delivering each message
to the ``ClientApp`` of its virtual node in the calling thread.

Flower's simulation engine runs ClientApps in Ray actors; on a small machine starting Ray costs
tens of seconds before the first message. This engine runs the very same ``ServerApp``,
strategies, workflows (SecAgg+), mods (DP clipping) and ``ClientApp`` objects — only the
transport differs. Messages are deep-copied both ways, as a real transport serialises them,
so an app that mutates what it received cannot leak into another node's message.
"""

from __future__ import annotations

import copy
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["inline_grid", "run_inline"]


def _grid_base() -> type:
    from flwr.serverapp import Grid

    return Grid


def inline_grid(client_app: Any, num_nodes: int, *,
               run_id: int = 1, run_config: Mapping[str, Any] | None = None,
               node_configs: list[dict[str, Any]] | None = None, seed: int = 0) -> Any:
    """A ``flwr.serverapp.Grid`` with ``num_nodes`` virtual nodes served by ``client_app``.

    Node ``k`` gets ``partition-id = k`` and ``num-partitions = num_nodes`` in its node
    config (as in Flower's simulation engine), merged with ``node_configs[k]`` if given.
    """
    import numpy as np
    from flwr.app import Context, Error, Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
    from flwr.supercore.run import Run

    base = _grid_base()
    rng = np.random.default_rng(seed)
    node_ids = [int(x) for x in rng.choice(2**62, size=num_nodes, replace=False) + 2]

    class _InlineGrid(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self._run = Run.create_empty(run_id)
            self.contexts: dict[int, Any] = {}
            for k, nid in enumerate(node_ids):
                cfg: dict[str, Any] = {"partition-id": k, "num-partitions": num_nodes}
                if node_configs is not None:
                    cfg.update(node_configs[k])
                self.contexts[nid] = Context(run_id=run_id, node_id=nid, node_config=cfg,
                                             state=RecordDict(),
                                             run_config=dict(run_config or {}))
            self._replies: dict[str, Any] = {}
            self.delivered = 0

        def set_run(self, run: Any) -> None:
            self._run = run

        @property
        def run(self) -> Any:
            return self._run

        def create_message(self, content: Any, message_type: str, dst_node_id: int,
                           group_id: str, ttl: float | None = None) -> Any:
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self) -> Iterable[int]:
            return list(self.contexts)

        def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
            ids = []
            for msg in messages:
                mid = uuid.uuid4().hex
                meta = msg.metadata.__dict__
                meta["_message_id"] = mid
                meta["_run_id"] = run_id
                meta["_src_node_id"] = SUPERLINK_NODE_ID
                meta["_created_at"] = time.time()
                self._replies[mid] = self._deliver(msg)
                ids.append(mid)
            return ids

        def _deliver(self, msg: Any) -> Any:
            dst = msg.metadata.dst_node_id
            if dst not in self.contexts:
                return Message(Error(code=ErrorCode.NODE_UNAVAILABLE,
                                     reason=f"no node {dst}"), reply_to=msg)
            delivered = Message(content=copy.deepcopy(msg.content),  # type: ignore[call-overload]
                                metadata=copy.deepcopy(msg.metadata))
            try:
                reply = client_app(delivered, self.contexts[dst])
            except Exception as e:  # a failing client becomes an error reply, as in Flower
                reason = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
                return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                     reason=reason), reply_to=msg)
            self.delivered += 1
            out = Message(copy.deepcopy(reply.content), reply_to=msg) \
                if reply.has_content() else Message(reply.error, reply_to=msg)
            return out

        def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
            return [self._replies.pop(m) for m in list(message_ids) if m in self._replies]

        def send_and_receive(self, messages: Iterable[Any], *,
                             timeout: float | None = None) -> Iterable[Any]:
            return self.pull_messages(self.push_messages(messages))

    return _InlineGrid()


def run_inline(server_app: Any, client_app: Any, num_nodes: int, *,
               run_config: Mapping[str, Any] | None = None,
               node_configs: list[dict[str, Any]] | None = None) -> Any:
    """Run ``server_app`` against ``num_nodes`` inline nodes; returns the grid (for its
    contexts and delivery count)."""
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    grid = inline_grid(client_app, num_nodes, run_config=run_config, node_configs=node_configs)
    context = Context(run_id=grid.run.run_id, node_id=SUPERLINK_NODE_ID, node_config={},
                      state=RecordDict(), run_config=dict(run_config or {}))
    # the identity a ServerApp process gets from its SuperLink (messages read it), as
    # Flower's own Python simulation API sets it
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = grid.run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    server_app(grid=grid, context=context)
    return grid
