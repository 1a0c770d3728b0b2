"""The ``webhook`` ticket destination: each ticket POSTed as JSON, with ``Idempotency-Key: <ticket.key>``."""

from __future__ import annotations

from ce_ticket_webhook.sink import TicketWebhookOptions, TicketWebhookSink

__all__ = ["TicketWebhookOptions", "TicketWebhookSink"]
