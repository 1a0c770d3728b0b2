"""Jira Cloud as a ticket destination (``jira`` in ``ce_daemon.ticket_sinks``), REST API v3.

Each ticket opens an issue (``POST /rest/api/3/issue``) whose description is an Atlassian Document
(:mod:`ce_jira.adf`: paragraphs at blank lines, hard breaks at line ends) and which carries the label
``<label_prefix><Ticket.key>`` (``ce-daemon-<key>``): the idempotency mark :meth:`JiraSink.find`
searches (``POST /rest/api/3/search/jql``, ``project = P AND labels = "…" ORDER BY created DESC``,
the newest wins). Jira's search index trails a create by a moment, which the core's retry backoff
covers: it looks again before creating again. A duplicate adds a comment ("Seen again: N alerts…").
Statuses are read in batches of 100 (``key in (…)``, ``fields: [status]``) and mapped by status
category: ``new`` → new, ``indeterminate`` → in_progress (on_hold when the status name says hold,
wait or block), ``done`` → closed; a key Jira no longer has → deleted (Jira refuses a whole query
that names a deleted key, so such keys are taken out and the batch asked again); a moved issue is
recognised by its id under its new key. An issue our user may no longer see reads as deleted too.

Answers: 400 ``{"errorMessages", "errors": {field: message}}`` → :class:`PermanentError` naming the
fields; 401/403 → :class:`AuthError`; 429 and 5xx → :class:`TransientError` with ``Retry-After`` (or,
without it, ``X-RateLimit-Reset``); a body that is not JSON → :class:`TransientError` quoting it.

Options:

- ``url`` (required): the site, ``https://acme.atlassian.net``; ``timeout`` (30s), ``tls``, ``headers``.
- ``email`` and ``api_token`` (a secret): API-token basic authentication.
- ``project`` (required): the project key (``SEC``); ``issue_type`` ("Task"), by name.
- ``labels`` ([]): more labels on every issue (no spaces); ``label_prefix`` ("ce-daemon-").
- ``priorities`` ({}): Jira priority name by severity (``{critical: Highest, high: High}``); a
  severity not named leaves the project's default priority.
- ``fields`` ({}): static fields added to every issue as Jira takes them (``customfield_10010: …``).
- ``max_body`` (16MiB): the largest answer read.

The queue's field mappings (``Ticket.fields``) go in last and win, except the project and the dedup
label: ``labels`` (space-separated) are added, ``description`` and ``environment`` become ADF,
``priority`` is a name, ``components`` comma-separated names, ``assignee``/``reporter`` account ids,
any other field is sent as the text it is.
"""

from __future__ import annotations

from ce_jira.sink import JiraOptions, JiraSink

__all__ = ["JiraOptions", "JiraSink"]
