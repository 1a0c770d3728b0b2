"""ce-daemon: a self-hosted replacement for Netskope Cloud Exchange."""

from __future__ import annotations

__version__ = "0.1.0"
