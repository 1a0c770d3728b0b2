"""Netskope incident write-back: a ticket's status change sent to its incident.

The request is ``PATCH /api/v2/incidents/update``.

The body is Netskope's: ``{"payload": [{"object_id", "field": "status", "old_value", "new_value", "user"}]}``
with the tenant's own token. A ticket's statuses map onto the incident's (``new`` → ``new``,
``in_progress`` and ``on_hold`` → ``in_progress``, ``closed`` → ``closed``).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Final

import aiohttp
import orjson

from ce_daemon.config.model import Tenant
from ce_daemon.errors import AuthError, TransientError
from ce_daemon.http import USER_AGENT, excerpt, status_error, transport_error
from ce_daemon.tickets.store import StoredTicket

__all__ = ["INCIDENT_STATUS", "IncidentWriter"]

UPDATE_PATH: Final = "/api/v2/incidents/update"
INCIDENT_STATUS: Final = {
    "new": "new", "in_progress": "in_progress", "on_hold": "in_progress", "closed": "closed",
    "deleted": "closed",
}  # fmt: skip
USER: Final = "ce-daemon"


class IncidentWriter:
    """Writes status changes back to the tenant an incident came from (one request per change)."""

    def __init__(self, tenants: Sequence[Tenant]) -> None:
        self.tenants = {t.name: t for t in tenants}

    async def write(self, tenant_name: str, ticket: StoredTicket, status: str) -> None:
        """Send ``ticket``'s new ``status`` to its incident; raise on failure (the caller logs it)."""
        tenant = self.tenants.get(tenant_name)
        new = INCIDENT_STATUS.get(status)
        if tenant is None or new is None or not ticket.object_id:
            return
        old = INCIDENT_STATUS.get(ticket.status, "new")
        change = {"object_id": ticket.object_id, "field": "status", "old_value": old, "new_value": new}
        body = {"payload": [{**change, "user": USER}]}
        context: ssl.SSLContext | bool = True
        if not tenant.verify_tls:
            context = False
        elif tenant.ca_file is not None:
            context = ssl.create_default_context(cafile=str(tenant.ca_file))
        url = tenant.url.rstrip("/") + UPDATE_PATH
        headers = {
            "Netskope-Api-Token": tenant.token.get_secret_value(),
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
        }
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=min(60.0, tenant.timeout)),
                    connector=aiohttp.TCPConnector(ssl=context),
                ) as session,
                session.patch(
                    url, data=orjson.dumps(body), headers=headers, allow_redirects=False
                ) as response,
            ):
                if not 200 <= response.status < 300:
                    text = excerpt(await response.content.read(2000))
                    raise status_error(
                        response.status,
                        f"{url} answered HTTP {response.status}: {text}",
                        response.headers,
                        url,
                    )
        except (AuthError, TransientError):
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, url) from exc
