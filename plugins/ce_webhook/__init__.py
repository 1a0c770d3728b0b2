"""The ``webhook`` log sink: JSON batches (an array or NDJSON) POSTed or PUT to any HTTPS endpoint."""

from __future__ import annotations

from ce_webhook.sink import WebhookOptions, WebhookSink

__all__ = ["WebhookOptions", "WebhookSink"]
