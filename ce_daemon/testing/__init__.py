"""The test kit shipped with the core: a run-the-daemon harness, notify and syslog sockets.

The tenant simulator lives in :mod:`ce_daemon.netskope.simulator` (``running_simulator``).
"""

from __future__ import annotations

from ce_daemon.testing.harness import DaemonProcess, write_pipeline

__all__ = ["DaemonProcess", "write_pipeline"]
