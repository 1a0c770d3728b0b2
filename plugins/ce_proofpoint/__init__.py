"""Proofpoint TAP's Very Attacked People as a risk source (``proofpoint`` in ``ce_daemon.risk_sources``).

Scores users by their TAP ``threatStatistics.attackIndex`` (unbounded, higher = more attacked),
declared as ``RiskScale(population=True, higher_is_safer=False)``: the core min-maxes it over each
poll's population and inverts it (Netskope CE: ``(1 - (x - min)/(max - min)) * 999 + 1``). A poll
pages through the People API's ``GET /v2/people/vap?window=30&size=…&page=N`` until it has read
``totalVapUsers`` (or a page comes back short). Only the Very Attacked People are listed: a user who
drops off the list is simply not in the poll.

Each of a user's ``identity.emails`` becomes a record of the same score (``emails: all``, the
default), keyed by the email lower-cased; ``emails: first`` keeps the first one only. A user without
an email, or whose attack index is missing or not a number, is refused with the reason; an email
already read in the poll is refused as listed twice.

Authentication is HTTP basic with a TAP service principal and its secret: 401 and 403 are an
:class:`~ce_daemon.plugin.AuthError`; 429 (the People API allows 50 requests per rolling 24 hours)
and 5xx are transient, with ``Retry-After`` honoured when sent (Proofpoint documents none). Errors
are quoted from the plain-text body Proofpoint answers.

Options:

- ``principal`` (required) and ``secret`` (required, a secret).
- ``url`` (``https://tap-api-v2.proofpoint.com``): the API's base URL, without ``/v2``.
- ``window`` (30): 14, 30 or 90 days.
- ``emails`` (``all``): ``all`` or ``first``.
- ``page_size`` (1000, at most 1000): users per page; ``max_pages`` (100): the most pages one poll
  reads (more: the poll fails, transient; mind the 50 requests a day).
- ``max_body`` (64MiB): the largest answer read; ``timeout`` (30s) per request; ``tls``.
"""

from __future__ import annotations

from ce_proofpoint.source import ProofpointOptions, ProofpointSource

__all__ = ["ProofpointOptions", "ProofpointSource"]
