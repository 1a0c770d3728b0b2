"""The control socket `status` asks: it never takes the place of a file of another kind."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from ce_daemon.control import ControlServer, ask_status


async def snapshot() -> dict[str, Any]:
    return {"phase": "ready"}


async def test_a_file_where_the_socket_should_be_is_left_alone(tmp_path: Path) -> None:
    """A regular file at the socket path is neither removed nor replaced: `control.unavailable` is logged."""
    path = tmp_path / "control.sock"
    path.write_text("an operator's file\n")
    server = ControlServer(path, snapshot)
    with capture_logs() as logs:
        await server.start()
        await server.close()
    assert path.read_text() == "an operator's file\n"
    assert [entry["event"] for entry in logs] == ["control.unavailable"]


async def test_a_stale_socket_left_by_a_killed_daemon_is_replaced(tmp_path: Path) -> None:
    """A socket file nobody listens on is replaced; the new server answers, and removes it at close."""
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # closed without unlinking, as a killed daemon leaves it
    server = ControlServer(path, snapshot)
    await server.start()
    try:
        assert await ask_status(path) == {"phase": "ready"}
    finally:
        await server.close()
    assert not path.exists()
