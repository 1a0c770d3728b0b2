"""The ``twilio`` ticket destination: a short SMS per ticket to each configured number."""

from __future__ import annotations

from ce_twilio.sink import TwilioOptions, TwilioSink, sms_body

__all__ = ["TwilioOptions", "TwilioSink", "sms_body"]
