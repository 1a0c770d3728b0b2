"""The ``email`` ticket destination: a mail per ticket over SMTP (STARTTLS, implicit TLS) (aiosmtplib)."""

from __future__ import annotations

from ce_email.sink import EmailOptions, EmailSink, compose

__all__ = ["EmailOptions", "EmailSink", "compose"]
