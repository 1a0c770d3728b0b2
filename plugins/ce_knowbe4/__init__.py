"""KnowBe4 as a risk source (``knowbe4`` in ``ce_daemon.risk_sources``).

Scores users by their KnowBe4 ``current_risk_score`` (0.0-100.0, higher = riskier; Netskope CE reads
it as ``1000 - 10 * score``), declared as ``RiskScale(low=0, high=100, higher_is_safer=False)``. A
poll pages through the Reporting API's ``GET /v1/users?page=N&per_page=500`` (``status=active``
unless ``active_only`` is off) until a page comes back short. The key is the user's email,
lower-cased. A user without an email, or whose risk score is missing or not a number, is refused
with the reason; a number outside 0-100 is passed as it is (the core skips and counts it).

Authentication is the Reporting API token as ``Authorization: Bearer``: 401 and 403 are an
:class:`~ce_daemon.plugin.AuthError`, 429 (KnowBe4 allows a few requests a second and a daily
quota) and 5xx are transient, with ``Retry-After`` honoured: a 429 asking to wait at most
``rate_limit_wait`` is waited out inside the poll (three times at most per page), a longer one fails
the poll with it.

Options:

- ``token`` (required, a secret): the Reporting API key (Account Settings → API).
- ``region`` (``us``): ``us``, ``eu``, ``ca``, ``uk`` or ``de`` (``https://<region>.api.knowbe4.com``);
  or ``url``, the API's base URL.
- ``active_only`` (true): only active users (archived users are not read).
- ``per_page`` (500, at most 500); ``max_pages`` (10,000): the most pages one poll reads (more: the
  poll fails, transient).
- ``rate_limit_wait`` (10s, at most 300s): the longest 429 wait spent inside a poll.
- ``max_body`` (64MiB): the largest answer read; ``timeout`` (30s) per request; ``tls``.
"""

from __future__ import annotations

from ce_knowbe4.source import KnowBe4Options, KnowBe4Source

__all__ = ["KnowBe4Options", "KnowBe4Source"]
