"""Netskope risk actions on users: lower a user's UCI, reset it, put the user in a SCIM group.

All three act on ``user`` entities, whose key is the e-mail address (Netskope's UCI user id and SCIM
``userName``), over REST API v2 with the ``Netskope-Api-Token`` header (`TenantClient`: bounded reads,
short 429s waited out, 401/403 an :class:`AuthError`, a lost connection a :class:`TransientError`).

``netskope_uci_impact`` (revertible) lowers the UCI by ``reduction`` (``POST …/incidents/user/uciimpact``)
and returns the ``anomaly_id``; reverting marks that anomaly allowed (``POST …/anomalies/{id}/allow``),
which gives the reduction back (an anomaly the tenant no longer knows, 404, counts as reverted).
An impact is not something one can look for before sending it again (``getuci`` shows scores, not
anomalies, and the tenant applies impacts asynchronously), so a double reduction is avoided thus:

- The request is built from the core's action-log entry (``RiskTarget.action_id`` and ``decided``):
  its ``timestamp`` is when the core decided the action and its ``reason`` names the entry, so a call
  made again — its answer lost, the daemon killed, another node taking over — is the *same* request
  (same user, timestamp, source and reason). That counts once where the tenant treats an identical
  impact as the same anomaly, which the tenant simulator does; the vendor documents no idempotency for
  this call, so on a real tenant the narrow window (the request landed, its answer was lost) may
  reduce twice.
- Before sending, the action writes the request to a journal in its data folder (per action-log entry;
  per (rule, user) when the core gave none); after the answer, the anomaly id. An apply whose entry
  has an anomaly id answers it without sending (the tenant answered, the core lost the answer).
- Entries older than ``replay_window`` are a finished edge (its revert may never have come); a revert
  removes the entry.

``netskope_uci_reset`` (not revertible) sets the UCI back to 1000 (``POST …/users/uci/reset``). It
looks first (``getuci``): a user without a UCI, or at 1000 already, needs nothing (the tenant would
answer 400 for a user without a UCI).

``netskope_scim_group`` (revertible) puts the user in the SCIM group ``group`` (its displayName):
the user is found by ``userName eq "<email>"`` (none: a :class:`PermanentError` naming it), the group
by ``displayName`` (created when missing and ``create_missing``), and the membership is looked at
before a ``PATCH`` ``add``: a member already is a success. Revert looks the same way and ``PATCH``
``remove``\\s; a user, group or membership that is not there is a success.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import quote

import orjson
from pydantic import Field
from typing_extensions import TypeVar

from ce_daemon.http import excerpt
from ce_daemon.plugin import (
    ComponentConfigError,
    Duration,
    PermanentError,
    PluginContext,
    RiskAction,
    RiskTarget,
    TransientError,
)
from ce_netskope.tenant import Answer, TenantClient, TenantConnection, TenantPlugin, error_messages

TOKEN_HEADER = "Netskope-Api-Token"  # noqa: S105  # the header's name, not a secret
GETUCI = "/api/v2/incidents/uba/getuci"
UCIIMPACT = "/api/v2/incidents/user/uciimpact"
ALLOW = "/api/v2/incidents/anomalies/{}/allow"
UCI_RESET = "/api/v2/incidents/users/uci/reset"
SCIM_USERS = "/api/v2/scim/Users"
SCIM_GROUPS = "/api/v2/scim/Groups"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
UCI_MAX = 1000
JOURNAL_MAX = 100_000
"""Journal entries kept at most (the oldest go first): a bound on the file whatever the rules do."""


class RiskActionOptions(TenantConnection):
    """The tenant's URL and v2 token (plus ``timeout`` and ``tls``)."""


class UciImpactOptions(RiskActionOptions):
    """Options of ``netskope_uci_impact``."""

    reduction: Annotated[int, Field(ge=1, le=UCI_MAX)] = 100
    """How much the UCI is lowered (Netskope's ``score``: a reduction, not the new value)."""
    source: Annotated[str, Field(min_length=1, max_length=255)] = "ce-daemon"
    """The impact's ``source``, as the tenant shows it."""
    reason: Annotated[str, Field(min_length=1, max_length=512)] = "Cloud Risk Exchange rule"
    """The impact's ``reason``; the rule's name is appended."""
    replay_window: Duration = 3600.0
    """How long after an impact an apply of the same rule and user is a replay, not a new impact."""


class UciResetOptions(RiskActionOptions):
    """Options of ``netskope_uci_reset``."""


class ScimGroupOptions(RiskActionOptions):
    """Options of ``netskope_scim_group``."""

    group: Annotated[str, Field(min_length=1, max_length=255)]
    """The SCIM group's displayName."""
    create_missing: bool = True
    """Create the group when the tenant has none of that name (False: a PermanentError)."""


RiskOptionsT_co = TypeVar(
    "RiskOptionsT_co", bound=RiskActionOptions, covariant=True, default=RiskActionOptions
)


def scim_quote(value: str) -> str:
    """``value`` as a SCIM filter's string literal (RFC 7644 §3.4.2.2: a JSON string)."""
    return orjson.dumps(value).decode()


class TenantRiskAction(TenantPlugin, RiskAction[RiskOptionsT_co]):
    """A risk action on a tenant's users, through one `TenantClient` for its life."""

    api_version: ClassVar[int] = 1
    entities = frozenset({"user"})

    def __init__(self, options: RiskOptionsT_co, context: PluginContext) -> None:
        super().__init__(options, context)
        self.client = TenantClient(options, context, {TOKEN_HEADER: options.token.get_secret_value()})
        self.base = self.client.base

    async def probe(self) -> None:
        await self.uci_of("")

    def user(self, target: RiskTarget) -> str:
        """The target's e-mail address; a PermanentError for another entity type."""
        if target.entity != "user" or not target.key:
            raise PermanentError(f"{type(self).__name__} acts on users, not {target.entity} {target.key!r}")
        return target.key

    def refused(self, answer: Answer, target: str) -> PermanentError:
        """The error a kept 4xx stands for, quoting the tenant's words (SCIM ``detail`` or ``errors``)."""
        parsed = json_or_none(answer.body)
        words = ""
        if isinstance(parsed, dict) and isinstance(parsed.get("detail"), str):
            words = excerpt(parsed["detail"])
        words = words or error_messages(parsed) or excerpt(answer.body)
        return PermanentError(f"{self.base}: {target} answered HTTP {answer.status}: {words}")

    async def uci_of(self, user: str) -> float | None:
        """The user's current UCI (``getuci``), None when the tenant has none for them."""
        body = {"users": [user] if user else [], "fromTime": 0, "capPerUser": 1}
        answer = await self.client.call("POST", GETUCI, body)
        if answer.status == 400:
            raise self.refused(answer, "POST " + GETUCI)
        parsed = answer.json("POST " + GETUCI)
        entries = parsed.get("usersUci") if isinstance(parsed, dict) else None
        if not isinstance(entries, list):
            raise TransientError(f"POST {GETUCI} answered no usersUci array: {excerpt(answer.body)}")
        for entry in entries:
            if not isinstance(entry, dict) or str(entry.get("userId", "")).lower() != user.lower():
                continue
            confidences = entry.get("confidences")
            if isinstance(confidences, list) and confidences and isinstance(confidences[-1], dict):
                score = confidences[-1].get("confidenceScore")
                if isinstance(score, int | float) and not isinstance(score, bool):
                    return float(score)
        return None


# -- UCI impact ------------------------------------------------------------------------------------


class ImpactJournal:
    """The impacts this action sent, per (rule, user): ``{timestamp, reason, at, anomaly_id?}``, in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def load(self) -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(self._load)

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            parsed = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ComponentConfigError(f"the UCI impact journal {self.path} cannot be read: {exc}") from exc
        return {k: v for k, v in parsed.items() if isinstance(v, dict)} if isinstance(parsed, dict) else {}

    async def save(self, entries: dict[str, dict[str, Any]]) -> None:
        await asyncio.to_thread(self._save, entries)

    def _save(self, entries: dict[str, dict[str, Any]]) -> None:
        if len(entries) > JOURNAL_MAX:
            kept = sorted(entries.items(), key=lambda item: float(item[1].get("at", 0)))[-JOURNAL_MAX:]
            entries = dict(kept)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("wb") as file:
            file.write(orjson.dumps(entries))
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(self.path)


class NetskopeUciImpactAction(TenantRiskAction[UciImpactOptions]):
    """Lowers a user's UCI by a set reduction; reverting allows the anomaly it made."""

    revertible = True

    def __init__(self, options: UciImpactOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.journal = ImpactJournal(context.data_dir / f"{context.name}.uci-impacts.json")
        self._lock = asyncio.Lock()

    async def apply(self, target: RiskTarget) -> Mapping[str, str]:
        user = self.user(target)
        key = _journal_key(target, user)
        async with self._lock:
            entries = await self.journal.load()
            now = time.time()
            entry = entries.get(key)
            if entry is not None and now - float(entry.get("at", 0)) > self.options.replay_window:
                entry = None
            if entry is not None and isinstance(entry.get("anomaly_id"), str):
                self.context.log.info("netskope.uci_impact_replayed", user=user, rule=target.rule)
                return _applied(entry, target)
            if entry is None or not isinstance(entry.get("timestamp"), int):
                entry = self._request(target, now)
                entries[key] = entry
                await self.journal.save(entries)
            anomaly_id = await self._impact(user, entry, entries, key)
            entry["anomaly_id"] = anomaly_id
            await self.journal.save(entries)
        return _applied(entry, target)

    def _request(self, target: RiskTarget, now: float) -> dict[str, Any]:
        """The impact to send for ``target``: from its action-log entry when the core gave one (the
        same request on every retry, on any node), else from now."""
        reason = f"{self.options.reason}: {target.rule}"
        if target.action_id and target.decided > 0:
            return {"timestamp": int(target.decided * 1000), "reason": f"{reason} [#{target.action_id}]",
                    "at": now}  # fmt: skip
        return {"timestamp": int(now * 1000), "reason": reason, "at": now}

    async def _impact(
        self, user: str, entry: dict[str, Any], entries: dict[str, dict[str, Any]], key: str
    ) -> str:
        body = {
            "user": user,
            "score": self.options.reduction,
            "timestamp": entry["timestamp"],
            "source": self.options.source,
            "reason": str(entry.get("reason", self.options.reason)),
        }
        answer = await self.client.call("POST", UCIIMPACT, body)
        if answer.status == 400:
            del entries[key]  # refused: nothing landed, the next apply is a new request
            await self.journal.save(entries)
            raise self.refused(answer, "POST " + UCIIMPACT)
        parsed = answer.json("POST " + UCIIMPACT)
        anomaly_id = parsed.get("anomalyId") if isinstance(parsed, dict) else None
        if not isinstance(anomaly_id, str | int) or isinstance(anomaly_id, bool) or anomaly_id == "":
            raise TransientError(f"POST {UCIIMPACT} answered no anomalyId: {excerpt(answer.body)}")
        return str(anomaly_id)

    async def revert(self, target: RiskTarget) -> None:
        user = self.user(target)
        applied = target.state.get("action", "")
        key = f"#{applied}" if applied else f"{target.rule}\n{user.lower()}"
        async with self._lock:
            entries = await self.journal.load()
            anomaly_id = target.state.get("anomaly_id") or entries.get(key, {}).get("anomaly_id")
            if not isinstance(anomaly_id, str) or not anomaly_id:
                self.context.log.info("netskope.uci_impact_nothing_to_revert", user=user, rule=target.rule)
                return
            path = ALLOW.format(quote(anomaly_id, safe=""))
            answer = await self.client.call("POST", path, keep=frozenset({400, 404}))
            if answer.status == 400:
                raise self.refused(answer, "POST " + path)
            if answer.status == 404:
                self.context.log.info("netskope.uci_anomaly_gone", anomaly=anomaly_id, user=user)
            if entries.get(key, {}).get("anomaly_id") == anomaly_id:
                del entries[key]
                await self.journal.save(entries)


def _journal_key(target: RiskTarget, user: str) -> str:
    """A journal entry per action-log entry, or (when the core gave none) per (rule, user)."""
    return f"#{target.action_id}" if target.action_id else f"{target.rule}\n{user.lower()}"


def _applied(entry: Mapping[str, Any], target: RiskTarget) -> dict[str, str]:
    """What an apply returns: the anomaly to allow on revert, and the journal entry it came from."""
    applied = {"anomaly_id": str(entry["anomaly_id"]), "timestamp": str(entry["timestamp"])}
    if target.action_id:
        applied["action"] = str(target.action_id)
    return applied


# -- UCI reset -------------------------------------------------------------------------------------


class NetskopeUciResetAction(TenantRiskAction[UciResetOptions]):
    """Sets a user's UCI back to 1000 (not revertible: the scores it replaced are gone)."""

    revertible = False

    async def apply(self, target: RiskTarget) -> Mapping[str, str]:
        user = self.user(target)
        score = await self.uci_of(user)
        if score is None or score >= UCI_MAX:
            self.context.log.info("netskope.uci_reset_not_needed", user=user, score=score)
            return {}
        answer = await self.client.call("POST", UCI_RESET, {"users": [user]})
        if answer.status == 400:
            if await self.uci_of(user) is None:
                return {}  # the UCI went away meanwhile: nothing to reset
            raise self.refused(answer, "POST " + UCI_RESET)
        return {}


# -- SCIM group ------------------------------------------------------------------------------------


class NetskopeScimGroupAction(TenantRiskAction[ScimGroupOptions]):
    """Puts a user in a SCIM group; reverting takes them out. Looks before every change."""

    revertible = True

    async def probe(self) -> None:
        await self._list(SCIM_USERS, [("count", "1")])

    async def apply(self, target: RiskTarget) -> Mapping[str, str]:
        user = self.user(target)
        user_id = await self._user_id(user)
        if user_id is None:
            raise PermanentError(f"{self.base}: the tenant has no SCIM user with userName {user!r}")
        group = await self._group()
        if group is None:
            if not self.options.create_missing:
                raise PermanentError(f"{self.base}: the tenant has no SCIM group {self.options.group!r}")
            group = await self._create_group()
        group_id, members = group
        state = {"group_id": group_id, "user_id": user_id}
        if user_id in members:
            return state
        await self._patch(group_id, "add", user_id, missing_ok=False)
        return state

    async def revert(self, target: RiskTarget) -> None:
        user = self.user(target)
        user_id = await self._user_id(user)
        group = await self._group()
        if user_id is None or group is None or user_id not in group[1]:
            return
        await self._patch(group[0], "remove", user_id, missing_ok=True)

    async def _list(self, path: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The ``Resources`` of a SCIM list answer."""
        answer = await self.client.call("GET", path, params=params)
        if answer.status == 400:
            raise self.refused(answer, "GET " + path)
        parsed = answer.json("GET " + path)
        resources = parsed.get("Resources", []) if isinstance(parsed, dict) else None
        if not isinstance(resources, list):
            raise TransientError(f"GET {path} answered no Resources array: {excerpt(answer.body)}")
        return [item for item in resources if isinstance(item, dict)]

    async def _user_id(self, user: str) -> str | None:
        """The SCIM id of the user whose userName is ``user`` (compared without case), or None."""
        found = await self._list(SCIM_USERS, [("filter", f"userName eq {scim_quote(user)}")])
        for item in found:
            if str(item.get("userName", "")).lower() == user.lower() and isinstance(item.get("id"), str):
                return str(item["id"])
        return None

    async def _group(self) -> tuple[str, set[str]] | None:
        """``(id, member ids)`` of the group named ``group``, or None."""
        name = self.options.group
        found = await self._list(SCIM_GROUPS, [("filter", f"displayName eq {scim_quote(name)}")])
        for item in found:
            if str(item.get("displayName", "")).lower() == name.lower() and isinstance(item.get("id"), str):
                group_id = str(item["id"])
                # A list answer may leave members out: then the group itself is read.
                group = item if "members" in item else await self._get_group(group_id)
                return group_id, _member_ids(group, "GET " + SCIM_GROUPS)
        return None

    async def _get_group(self, group_id: str) -> dict[str, Any]:
        path = f"{SCIM_GROUPS}/{quote(group_id, safe='')}"
        answer = await self.client.call("GET", path)
        parsed = answer.json("GET " + path)
        if answer.status == 400 or not isinstance(parsed, dict):
            raise self.refused(answer, "GET " + path)
        return parsed

    async def _create_group(self) -> tuple[str, set[str]]:
        """Create the group; when the tenant says it exists (a create whose answer was lost), use it."""
        body = {"schemas": [GROUP_SCHEMA], "displayName": self.options.group, "members": []}
        answer = await self.client.call("POST", SCIM_GROUPS, body, keep=frozenset({400, 409}))
        if answer.status in (400, 409):
            found = await self._group()
            if found is None:
                raise self.refused(answer, "POST " + SCIM_GROUPS)
            return found
        parsed = answer.json("POST " + SCIM_GROUPS)
        group_id = parsed.get("id") if isinstance(parsed, dict) else None
        if not isinstance(group_id, str) or not group_id:
            raise TransientError(f"POST {SCIM_GROUPS} answered a group without an id: {excerpt(answer.body)}")
        self.context.log.info("netskope.scim_group_created", group=self.options.group, id=group_id)
        return group_id, set()

    async def _patch(self, group_id: str, op: str, user_id: str, *, missing_ok: bool) -> None:
        path = f"{SCIM_GROUPS}/{quote(group_id, safe='')}"
        body = {
            "schemas": [PATCH_SCHEMA],
            "Operations": [{"op": op, "path": "members", "value": [{"value": user_id}]}],
        }
        answer = await self.client.call("PATCH", path, body, keep=frozenset({400, 404}), read=False)
        if answer.status == 404 and missing_ok:
            return
        if answer.status == 404:
            raise TransientError(
                f"{self.base}: PATCH {path}: the group went away; the next attempt looks again"
            )
        if answer.status == 400:
            raise self.refused(answer, "PATCH " + path)


def _member_ids(group: dict[str, Any], target: str) -> set[str]:
    members = group.get("members") or []
    if not isinstance(members, list):
        raise TransientError(f"{target} answered a group whose members are not an array")
    return {str(m["value"]) for m in members if isinstance(m, dict) and isinstance(m.get("value"), str)}


def json_or_none(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
