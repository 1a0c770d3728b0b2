"""The test kit shipped with the core: a run-the-daemon harness, notify and syslog sockets.

The tenant simulator lives in :mod:`ce_daemon.simulator.tenant` (``running_simulator``); the log
sink contract kit a plugin's own tests run in :mod:`ce_daemon.testing.contract` (it needs pytest).
"""

from __future__ import annotations

from ce_daemon.testing.harness import DaemonProcess, write_pipeline

__all__ = ["DaemonProcess", "write_pipeline"]
