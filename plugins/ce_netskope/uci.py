"""``netskope_uci``: users' User Confidence Index read from the tenant (``getuci``), as a risk source.

Netskope scores each user's confidence on its own scale (0-1000, 1000 = fully trusted), lowered by the
anomalies its behaviour analytics find and by impacts other systems send. It cannot be listed, only
asked about named users: before each poll the core hands the source the users the state knows (from
every source, :attr:`RiskSource.known`), and the source asks for them in batches of at most 512
(``POST /api/v2/incidents/uba/getuci`` with ``{"users": […], "fromTime": 0, "capPerUser": 1}``, as
CE's Netskope risk plugin does), taking each user's last ``confidences[].confidenceScore``.

A user the tenant has no UCI for is left out (not an error); an entry of the wrong shape is refused
and counted. The whole poll fails (nothing stored, the last scores stay) when a batch fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, ClassVar

from pydantic import Field

from ce_daemon.http import excerpt
from ce_daemon.plugin import (
    PermanentError,
    PluginContext,
    RiskPage,
    RiskRecord,
    RiskScale,
    RiskSource,
    TransientError,
)
from ce_netskope.risk import GETUCI, TOKEN_HEADER, UCI_MAX, json_or_none
from ce_netskope.tenant import TenantClient, TenantConnection, TenantPlugin, error_messages

__all__ = ["NetskopeUciSource", "UciSourceOptions"]

BATCH_MAX = 512
"""The most users in one ``getuci`` request (CE's batch)."""


class UciSourceOptions(TenantConnection):
    """The tenant's URL and v2 token (plus ``timeout`` and ``tls``), and the batch size."""

    batch: Annotated[int, Field(ge=1, le=BATCH_MAX)] = BATCH_MAX
    """Users per ``getuci`` request."""


class NetskopeUciSource(TenantPlugin, RiskSource[UciSourceOptions]):
    """Every known user's current UCI, asked for by name in batches."""

    api_version: ClassVar[int] = 1
    entities = frozenset({"user"})
    asks_about = frozenset({"user"})
    scale = RiskScale(0.0, float(UCI_MAX), higher_is_safer=True)

    def __init__(self, options: UciSourceOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.client = TenantClient(options, context, {TOKEN_HEADER: options.token.get_secret_value()})

    async def probe(self) -> None:
        """An empty ``getuci``."""
        await self._ask([])

    async def pull(self) -> AsyncIterator[RiskPage]:
        users = [u for u in self.known.get("user", ()) if "@" in u]
        size = self.options.batch
        for start in range(0, len(users), size):
            batch = users[start : start + size]
            yield await self._page(batch, await self._ask(batch))

    async def _ask(self, users: list[str]) -> list[Any]:
        answer = await self.client.call("POST", GETUCI, {"users": users, "fromTime": 0, "capPerUser": 1})
        if answer.status == 400:
            words = error_messages(json_or_none(answer.body)) or excerpt(answer.body)
            raise PermanentError(f"{self.client.base}: POST {GETUCI} answered HTTP 400: {words}")
        parsed = answer.json("POST " + GETUCI)
        entries = parsed.get("usersUci") if isinstance(parsed, dict) else None
        if not isinstance(entries, list):
            raise TransientError(f"POST {GETUCI} answered no usersUci array: {excerpt(answer.body)}")
        return entries

    async def _page(self, asked: list[str], entries: list[Any]) -> RiskPage:
        wanted = {user.lower() for user in asked}
        records: list[RiskRecord] = []
        refused: list[tuple[str, str]] = []
        for entry in entries:
            user = entry.get("userId") if isinstance(entry, dict) else None
            if not isinstance(user, str) or user.lower() not in wanted:
                refused.append((excerpt(repr(entry), 120), "not a user this request asked about"))
                continue
            confidences = entry.get("confidences")
            if not isinstance(confidences, list) or not confidences:
                continue  # no UCI for this user
            last = confidences[-1]
            score = last.get("confidenceScore") if isinstance(last, dict) else None
            if not isinstance(score, int | float) or isinstance(score, bool):
                refused.append((user, f"confidenceScore is {excerpt(repr(score), 60)}"))
                continue
            stamp = last.get("timestamp")
            seen = stamp / 1000 if isinstance(stamp, int | float) and not isinstance(stamp, bool) else None
            records.append(RiskRecord("user", user, score=float(score), seen=seen))
        return RiskPage(records, refused)
