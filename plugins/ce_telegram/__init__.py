"""The ``telegram`` ticket destination: alerts as Bot API messages, a duplicate edits the earlier one."""

from __future__ import annotations

from ce_telegram.sink import TelegramOptions, TelegramSink, render

__all__ = ["TelegramOptions", "TelegramSink", "render"]
