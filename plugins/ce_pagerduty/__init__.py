"""The ``pagerduty`` ticket destination: Events API v2 alerts, deduplicated by the ticket's key."""

from __future__ import annotations

from ce_pagerduty.sink import PagerDutyOptions, PagerDutySink

__all__ = ["PagerDutyOptions", "PagerDutySink"]
