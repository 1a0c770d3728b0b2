"""The ``slack`` ticket destination: a message per ticket, by incoming webhook or ``chat.postMessage``."""

from __future__ import annotations

from ce_slack.message import escape_mrkdwn
from ce_slack.sink import SlackOptions, SlackSink

__all__ = ["SlackOptions", "SlackSink", "escape_mrkdwn"]
