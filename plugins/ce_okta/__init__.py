"""Okta user risk levels as a risk source (``okta`` in ``ce_daemon.risk_sources``).

Each poll lists the org's users, ``GET /api/v1/users`` (``limit``, ``filter``, then the ``Link``
header's ``rel="next"``, only on the configured origin), and asks each user's risk, ``GET
/api/v1/users/{id}/risk`` (Identity Threat Protection), at most ``concurrency`` (4) at a time; every
call carries ``Authorization: SSWS <token>``. Each page of users gives one page of ``user``
records keyed by the user's ``email`` (or ``login``), lower-cased, with the ``riskLevel`` as a label
on ``RiskScale(labels={"LOW": 875, "MEDIUM": 625, "HIGH": 375})`` (CE's band medians).

- ``riskLevel`` ``NONE`` (Okta has no risk for the user): no record, nothing counted; the core keeps
  no score of Okta's for that user.
- A risk answer without a ``riskLevel``, or with a level other than LOW/MEDIUM/HIGH/NONE, is
  refused (counted, never stored), as is a user without the key field; a user gone between the
  list and the risk call (404) is refused as gone.
- Attributes: ``okta_id``, ``login``, ``name``, ``status``, ``reason`` (Okta's, cut to 200 characters).

Rate limits: every answer's ``X-Rate-Limit-Remaining`` is watched; at ``min_remaining`` or below,
no request leaves before ``X-Rate-Limit-Reset`` (measured against the answer's ``Date``). A 429 (Okta's
``E0000047``) waits for its ``Retry-After``, else for ``X-Rate-Limit-Reset``. A wait longer than
``max_retry_wait``, or more than ``retries`` 429s in a row, fails the poll as transient with that
delay as its ``retry_after``; the pages already yielded stay.

Errors: Okta's ``{"errorCode", "errorSummary", ...}``; 401 (``E0000011`` invalid token) and 403 (a
token without the permission, or an org without Identity Threat Protection) → :class:`AuthError`;
5xx transient; an answer that is not JSON or not of Okta's shape, or larger than ``max_body``,
fails the poll as transient.

Options:

- ``url`` (required): the org's URL, ``https://acme.okta.com``.
- ``token`` (required, a secret): an API token (``{$env: OKTA_TOKEN}``).
- ``key`` (``email``): the entity key, the profile's ``email`` or ``login``.
- ``filter`` (``status eq "ACTIVE"``): Okta's filter on the users list; null lists every user.
- ``page_size`` (200, Okta's most), ``max_users`` (10,000): users per page and per poll (reaching
  it ends the poll there, logged).
- ``concurrency`` (4, at most 4): risk calls at once.
- ``min_remaining`` (1), ``retries`` (3), ``max_retry_wait`` (60s): rate-limit handling (above).
- ``max_body`` (8MiB); ``timeout`` (30s), ``tls``, ``headers``.
"""

from __future__ import annotations

from ce_okta.source import LEVELS, OktaOptions, OktaSource

__all__ = ["LEVELS", "OktaOptions", "OktaSource"]
