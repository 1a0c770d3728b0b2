"""Plain-text and CSV indicator feeds: the ``feed`` threat source and the ``edl`` threat sink.

``feed`` pulls a whole list of indicators (one a line, or a CSV column) over HTTP(S) or from a
local file; ``edl`` serves the shared list as an External Dynamic List that firewalls poll.
"""

from __future__ import annotations

from ce_feed.edl import EdlOptions, EdlSink
from ce_feed.source import FeedOptions, FeedSource

__all__ = ["EdlOptions", "EdlSink", "FeedOptions", "FeedSource"]
