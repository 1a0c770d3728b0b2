"""SecurityScorecard scores as a risk source (``securityscorecard`` in ``ce_daemon.risk_sources``).

Each poll reads the companies of each configured portfolio, ``GET /portfolios/{id}/companies``
with ``Authorization: Token <key>``, one page per portfolio (the endpoint answers a portfolio whole,
``{"entries": [...], "total": n}``), and gives one ``application`` record per company:

- by default its ``score`` (0-100, higher = better) as the raw score on
  ``RiskScale(low=0, high=100)``: the core normalises it as ``score * 10``, and skips and counts a
  score out of that range;
- with ``use_grade: true`` its letter ``grade`` as a label, mapped to the median of a Netskope band
  (:data:`GRADE_SCORES`): A 875 (Low), B 625 (Medium), C 375 (High), D 125 and F 125 (Critical).
  Five grades fall into four bands, so D and F share Critical: a D is already a poor score
  (60-69) and neither should pass a rule that an F trips. The YAML's ``scale:`` may map them otherwise.

A company without a numeric score (or a grade A-F, with ``use_grade``), or without its key field, is
refused and counted; a company in several portfolios is read once (its first portfolio). Attributes:
``name``, ``domain``, ``grade``, ``industry``, ``portfolio``. SecurityScorecard gives no scoring date:
``seen`` is the poll's time.

Errors: SecurityScorecard's ``{"error": {"message", "statusCode"}}``; 401/403 → :class:`AuthError`,
404 for a portfolio → a configuration error naming it, 429 and 5xx transient (a ``Retry-After`` of at
most ``max_retry_wait`` is waited for inside the poll, ``retries`` times); an answer that is not JSON
or not of that shape, or larger than ``max_body``, fails the poll as transient.

Options:

- ``url`` (``https://api.securityscorecard.io``): the API's base URL.
- ``token`` (required, a secret): the API key (``{$env: SSC_TOKEN}``).
- ``portfolios`` (required): portfolio ids to read, in order.
- ``key`` (``domain``): the entity key, ``domain`` (lower-cased) or ``name``.
- ``use_grade`` (false): score by grade (see above) rather than by score.
- ``max_records`` (100,000), ``max_body`` (32MiB): bounds of one poll.
- ``retries`` (2), ``max_retry_wait`` (60s); ``timeout`` (30s), ``tls``, ``headers``.
"""

from __future__ import annotations

from ce_securityscorecard.source import GRADE_SCORES, SecurityScorecardOptions, SecurityScorecardSource

__all__ = ["GRADE_SCORES", "SecurityScorecardOptions", "SecurityScorecardSource"]
