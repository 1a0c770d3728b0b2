"""Which node a process is: its name in the cluster and its local directory.

Several nodes may run on one machine from one pipeline file (a systemd template unit
``ce-daemon@.service``): each is told apart by ``run --node-name/--data-dir`` (or the environment's
``CE_DAEMON_NODE_NAME``/``CE_DAEMON_DATA_DIR``), which override ``cluster.node_name`` and the
directory ``state.path`` names. That directory holds what is the node's own: its control socket (so
``status --data-dir`` finds it) and, on SQLite, the state itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ce_daemon.cluster.settings import ClusterSettings
from ce_daemon.config.model import Pipeline

NODE_NAME_ENV = "CE_DAEMON_NODE_NAME"
DATA_DIR_ENV = "CE_DAEMON_DATA_DIR"
DEFAULT_SOCKET_NAME = "control.sock"


@dataclass(frozen=True, slots=True)
class Node:
    """What the command line or the environment says about this node (None: as the file says)."""

    name: str | None = None
    data_dir: Path | None = None

    @classmethod
    def given(cls, environ: Mapping[str, str], name: str | None = None, data_dir: Path | None = None) -> Node:
        """The options given, each from the command line first, else from the environment."""
        name = name or environ.get(NODE_NAME_ENV) or None
        if name is not None:
            try:
                ClusterSettings(node_name=name)
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                raise ValueError(f"node name {name!r} (--node-name or {NODE_NAME_ENV}): {reason}") from None
        directory = data_dir or (Path(environ[DATA_DIR_ENV]) if environ.get(DATA_DIR_ENV) else None)
        return cls(name, directory.absolute() if directory is not None else None)

    def apply(self, config: Pipeline) -> Pipeline:
        """``config`` as this node runs it: its data directory and its name put in."""
        update: dict[str, object] = {}
        if self.data_dir is not None:
            update["state"] = config.state.model_copy(update={"path": self.data_dir / config.state.path.name})
            socket = config.control.socket
            if socket is not None:  # kept by name, inside the node's directory
                update["control"] = config.control.model_copy(update={"socket": self.data_dir / socket.name})
        if self.name is not None and config.state.url is not None:
            cluster = config.cluster or ClusterSettings()
            named = cluster.model_dump() | {"node_name": self.name}
            update["cluster"] = ClusterSettings.model_validate(named)
        return config.model_copy(update=update) if update else config


def cluster_settings(config: Pipeline) -> ClusterSettings | None:
    """How this node takes part in a cluster: on a PostgreSQL state always (the defaults when the file
    has no ``cluster:`` section), on SQLite never (one node, guarded by the state's file lock)."""
    if config.state.url is None:
        return None
    return config.cluster or ClusterSettings()
