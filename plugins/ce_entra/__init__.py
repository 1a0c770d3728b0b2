"""Microsoft Entra ID Protection's risky users as a risk source (``entra_id`` in ``ce_daemon.risk_sources``).

Each poll reads ``GET /v1.0/identityProtection/riskyUsers`` from Microsoft Graph (``$top``, an
optional ``$filter``, then each answer's ``@odata.nextLink``, only on the Graph origin configured)
with an access token from the client-credentials grant (``tenant_id``, ``client_id``,
``client_secret``; token endpoint ``{authority}/{tenant_id}/oauth2/v2.0/token``, scope
``https://graph.microsoft.com/.default``). The app needs the ``IdentityRiskyUser.Read.All``
application permission, and the tenant Entra ID P2. The token is cached until shortly before it
expires; a 401 from Graph (a token revoked or expired early) is answered by one fresh token and the
same request again.

Each risky user gives one ``user`` record keyed by its ``userPrincipalName``, lower-cased, with its
``riskLevel`` as a label on ``RiskScale(labels={"low": 875, "medium": 625, "high": 375})`` (CE's band
medians); ``seen`` is ``riskLastUpdatedDateTime``. Attributes: ``entra_id``, ``name``,
``risk_state``, ``risk_detail``.

- ``riskLevel`` ``none`` (remediated, dismissed, confirmed safe) and deleted users (``isDeleted``):
  no record, nothing counted. A user who is not a risky user at all is not listed by Graph.
- ``hidden`` (the tenant's licence hides the level), a missing or unknown level, or no
  ``userPrincipalName``: refused (counted, never stored).

Errors are Graph's ``{"error": {"code", "message"}}``: 401 after a fresh token and 403 (the
permission or the licence missing) → :class:`AuthError`, as is a refused client secret at the token
endpoint; 429 and 5xx transient (a ``Retry-After`` of at most ``max_retry_wait`` is waited for inside
the poll, ``retries`` times); an answer that is not JSON or not of Graph's shape, or larger than
``max_body``, fails the poll as transient.

Options:

- ``tenant_id``, ``client_id`` (required), ``client_secret`` (required, a secret).
- ``authority`` (``https://login.microsoftonline.com``), ``graph_url``
  (``https://graph.microsoft.com``), ``scope`` (``https://graph.microsoft.com/.default``): for a
  national cloud (or a test's fake).
- ``filter`` (none): a Graph ``$filter``, e.g. ``riskState eq 'atRisk'``.
- ``page_size`` (500, Graph's most for this API), ``max_pages`` (1000), ``max_users`` (100,000).
- ``max_body`` (16MiB), ``retries`` (2), ``max_retry_wait`` (60s); ``timeout`` (30s), ``tls``.
"""

from __future__ import annotations

from ce_entra.source import LEVELS, EntraIdOptions, EntraIdSource

__all__ = ["LEVELS", "EntraIdOptions", "EntraIdSource"]
