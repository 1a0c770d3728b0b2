"""ServiceNow as a ticket destination (``servicenow`` in ``ce_daemon.ticket_sinks``), through the Table API.

Each ticket opens a record in ``incident`` (ITSM) or ``sn_si_incident`` (Security Incident
Response) with ``POST /api/now/table/{table}``: ``short_description`` (the title, one line, cut to
160), ``description`` (cut to 4,000), impact and urgency from the severity (critical 1/1, high
1/2, medium 2/2, low 3/2, informational 3/3: P1 to P5 in the default lookup), ``correlation_id`` =
``Ticket.key`` and ``correlation_display`` = "ce-daemon". Every call asks for stored values
(``sysparm_display_value=false``, ``sysparm_exclude_reference_link=true``). :meth:`ServiceNowSink.find`
reads ``correlation_id=<key>`` (the newest record), so that after a lost answer nothing is created
twice; a duplicate adds ``work_notes`` ("Seen again: N alerts…") with ``PATCH``. The link is
``<instance>/nav_to.do?uri=<table>.do?sys_id=…``; the ref keeps the record's ``number``.

Statuses are read in batches of 100 (``sysparm_query=sys_idIN…``, ``sysparm_fields=sys_id,state``);
a sys_id the instance no longer answers (deleted, or hidden from us by an ACL) is ``deleted``.
``state`` maps per table:

- ``incident``: 1 New → new; 2 In Progress → in_progress; 3 On Hold and the legacy 4 Awaiting
  Caller, 5 Awaiting Evidence → on_hold; 6 Resolved, 7 Closed, 8 Canceled → closed.
- ``sn_si_incident``: 10 Draft → new; 16 Analysis, 18 Contain, 19 Eradicate, 20 Recover, 100 Review
  → in_progress; 3 Closed, 7 Cancelled → closed (SIR has no on-hold state; it is a substate).
- any other value → ``other`` with the value as the raw status (an instance's own states).

Answers: ServiceNow's ``{"error": {"message", "detail"}, "status": "failure"}`` is quoted; 400 →
:class:`PermanentError`; 401 and 403 → :class:`AuthError`, except a 403 "Operation Failed" (a data
policy or business rule refusing the record) → :class:`PermanentError`; 429 and 5xx →
:class:`TransientError` with ``Retry-After`` (or, without it, ``X-RateLimit-Reset``); a body that is
not JSON (a hibernating instance's HTML page) → :class:`TransientError` quoting it.

Options:

- ``url`` (required): the instance, ``https://acme.service-now.com``; ``timeout`` (30s), ``tls``, ``headers``.
- ``username`` and ``password`` (a secret) for basic authentication, or ``token`` (a secret), an
  OAuth access token sent as ``Authorization: Bearer``.
- ``table`` ("incident"): ``incident`` or ``sn_si_incident``.
- ``fields`` ({}): static fields of every record (``category: security``, ``cmdb_ci: <sys_id>``).
- ``assignment_group``, ``caller``: a group and a user (sys_id or name); the caller goes in
  ``caller_id`` on ``incident`` and ``requested_by`` on ``sn_si_incident``.
- ``priority_from`` ("impact_urgency"): or ``priority`` (1 critical … 5 informational, for instances
  that let it be written) or ``none``.
- ``correlation_display`` ("ce-daemon"); ``max_body`` (16MiB): the largest answer read.

The queue's field mappings (``Ticket.fields``) go in after the static fields and win, except
``correlation_id`` and ``correlation_display``.
"""

from __future__ import annotations

from ce_servicenow.sink import ServiceNowOptions, ServiceNowSink

__all__ = ["ServiceNowOptions", "ServiceNowSink"]
