"""BitSight security ratings as a risk source (``bitsight`` in ``ce_daemon.risk_sources``).

Each poll reads the portfolio through ``GET /ratings/v1/companies`` (HTTP basic authentication with
the API token as the user name and no password) and gives one ``application`` record per company:
its ``rating`` (250-900, higher = better) as the raw score on :attr:`BitSightSource.scale`
(``RiskScale(low=250, high=900)``: the core normalises it as CE does, ``(rating - 250) / 650 * 1000``,
and skips and counts a rating out of that range). Pages are asked with ``limit``/``offset`` and
followed through ``links.next`` (only on the configured origin: the token never goes elsewhere); an
answer without ``links.next`` is the last page.

A company without a numeric rating, or without the field the key is taken from, is refused (counted,
never stored); a key seen twice in one poll is refused the second time. ``seen`` is the company's
``rating_date`` (midnight UTC). Attributes: ``guid``, ``name``, ``domain``, ``industry``.

Errors: 401/403 (BitSight's ``{"detail": …}``) → :class:`AuthError`; 429 and 5xx → transient, and
when they carry a ``Retry-After`` of at most ``max_retry_wait`` the request is sent again after it
(``retries`` times) before the poll fails with that ``Retry-After``; an answer that is not JSON or
not of BitSight's shape, or larger than ``max_body``, fails the poll as transient.

Options:

- ``url`` (``https://api.bitsighttech.com``): the API's base URL.
- ``token`` (required, a secret): the API token (``{$env: BITSIGHT_TOKEN}``).
- ``key`` (``name``): the entity key, ``name`` (the company's name) or ``domain`` (its
  ``primary_domain``, lower-cased).
- ``page_size`` (100, at most 1000), ``max_pages`` (1000), ``max_records`` (100,000): bounds of one
  poll (reaching one ends the poll there, logged).
- ``max_body`` (16MiB): the largest answer read.
- ``retries`` (2), ``max_retry_wait`` (60s): waits for a short ``Retry-After`` inside a poll.
- ``timeout`` (30s), ``tls``, ``headers``: as every HTTP plugin's.
"""

from __future__ import annotations

from ce_bitsight.source import BitSightOptions, BitSightSource

__all__ = ["BitSightOptions", "BitSightSource"]
