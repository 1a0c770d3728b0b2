"""CrowdStrike Falcon Zero Trust Assessment as a risk source (``crowdstrike_zta`` in the risk sources).

Scores devices: each host's ZTA ``assessment.overall`` (1-100, higher = safer; Netskope CE reads it
as ``score * 10``), declared as ``RiskScale(low=0, high=100, higher_is_safer=True)``: the linear map
of 0-100 onto 0-1000 is exactly CE's ``score * 10`` (a lower bound of 1 would map 1 to 0, not 10;
ZTA never scores 0). A poll lists the hosts (``GET /devices/queries/devices-scroll/v1``, scrolled by
its ``offset`` token), then per batch of at most 100 host ids reads their assessments
(``GET /zero-trust-assessment/entities/assessments/v1``) and their details
(``GET /devices/entities/devices/v2``: hostname and platform). A host without an assessment, or
whose assessment carries no number, is refused with the reason; a score outside 0-100 is passed as
it is (the core skips and counts it).

Authentication is OAuth2 client credentials (``POST /oauth2/token``, an API client with the scopes
*Hosts: Read* and *Zero Trust Assessment: Read*); the token is cached until shortly before it
expires, and renewed once when the API answers 401. A refused client (403 from the token endpoint)
or a missing scope (403 from the API) is an :class:`~ce_daemon.plugin.AuthError`; 429 and 5xx are
transient, waiting ``X-RateLimit-RetryAfter`` (epoch seconds, CrowdStrike's header) or
``Retry-After``: a wait of at most ``rate_limit_wait`` is waited out inside the poll (three times at
most per request), a longer one fails the poll with it. Errors quote CrowdStrike's
``{"errors": [{"code", "message"}]}``.

Options:

- ``client_id`` (required) and ``client_secret`` (required, a secret).
- ``cloud`` (``us-1``): ``us-1``, ``us-2``, ``eu-1`` or ``us-gov-1``; or ``url``, the API's base URL.
- ``member_cid``: a child CID, for a parent (Flight Control) API client.
- ``key`` (``aid``): the device's key, its agent id (``aid``) or its ``hostname`` (lower-cased; a host
  without one is refused).
- ``filter``: an FQL filter on the hosts listed (``platform_name:'Windows'``).
- ``page_size`` (5000, at most 5000): host ids per scroll page; ``batch_size`` (100, at most 100): host
  ids per assessment request.
- ``max_devices`` (1,000,000): the most hosts one poll reads (beyond that the poll fails, transient).
- ``rate_limit_wait`` (10s, at most 300s): the longest 429 wait spent inside a poll.
- ``max_body`` (64MiB): the largest answer read; ``timeout`` (30s) per request; ``tls``.
"""

from __future__ import annotations

from ce_crowdstrike.source import CrowdStrikeZtaOptions, CrowdStrikeZtaSource

__all__ = ["CrowdStrikeZtaOptions", "CrowdStrikeZtaSource"]
