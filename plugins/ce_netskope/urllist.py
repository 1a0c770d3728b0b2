"""The ``netskope_url_list`` threat sink: one URL list of a Netskope tenant, kept by REST API v2.

Every push looks first, then writes only the difference, then deploys once:

1. ``GET /api/v2/policy/urllist`` (ids, names, pending flags) finds the list by name; ``GET …/{id}``
   reads its pending content (what the next deploy applies).
2. What ``Push.add`` holds that the list does not is appended (``PATCH …/{id}/append``, ``batch``
   entries a request); a missing list is created with the first batch (``POST``). When a value of
   ``Push.remove`` is in the list, the list's new content goes in one ``PATCH …/{id}/replace``
   instead; a full push replaces the content unless it already is the one wanted.
3. ``POST …/deploy`` once, when this push changed the list or found it with changes pending (an
   earlier push whose deploy failed, or whose answer was lost).

A push whose answer was lost is pushed again whole, and since step 1 reads what landed, nothing is
appended twice and no second list of the same name is created. Entries the tenant calls invalid
(the ``invalid_urls`` of its 400) are dropped, the request sent again without them, and reported in
``PushResult.rejected``. URL lists keep no tags: ``Push.tag`` has nowhere to go.

Entries are sent as the core normalised them, for either ``list_type`` (as Netskope's own CE plugin
does): in a ``regex`` list, a value that is no valid regular expression is refused by the tenant and
reported. A deploy applies every pending change of the tenant, not only this list's (the API has no
other kind).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, NoReturn

import orjson
from pydantic import Field

from ce_daemon.http import excerpt, status_error
from ce_daemon.plugin import (
    AuthError,
    ComponentConfigError,
    Health,
    PermanentError,
    PluginContext,
    Push,
    PushResult,
    SharedIoc,
    TransientError,
)
from ce_netskope.tenant import Answer, TenantOptions, TenantSink, error_messages

URLLIST = "/api/v2/policy/urllist"
TOKEN_HEADER = "Netskope-Api-Token"  # noqa: S105  # the header's name, not a secret
MAX_ENTRIES = 300_000
"""Netskope's cap on entries in one URL list (CE's ``MAX_IOC_LIMIT``)."""
MAX_LIST_BYTES = 7 * 1024 * 1024
"""Netskope's cap on one URL list: 7 MB of its URLs as a JSON array (CE's ``MAX_SIZE_LIMIT``)."""


class UrlListOptions(TenantOptions):
    """Options of the ``netskope_url_list`` sink."""

    list_type: Literal["exact", "regex"] = "exact"
    """How the tenant matches the entries: as written, or as regular expressions."""
    batch: Annotated[int, Field(ge=1, le=MAX_ENTRIES)] = 10_000
    """Entries per append request."""
    deploy: bool = True
    """Deploy after a push that changed the list (False: an administrator deploys)."""


class NetskopeUrlListSink(TenantSink[UrlListOptions]):
    """Keeps one Netskope URL list: appends what is new, replaces on removal, deploys once a push."""

    types = frozenset({"url", "domain", "hostname", "ipv4", "ipv6"})
    incremental = True
    max_entries = MAX_ENTRIES
    max_bytes = MAX_LIST_BYTES - 1
    """Σ `entry_size` = the JSON array's size less one (its brackets, and no comma after the last entry)."""

    def __init__(self, options: UrlListOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.name = options.list

    def headers(self) -> dict[str, str]:
        return {TOKEN_HEADER: self.options.token.get_secret_value()}

    def entry_size(self, ioc: SharedIoc) -> int:
        """The value as a JSON string (quotes, escapes, UTF-8) and the comma after it: what the cap counts."""
        return len(orjson.dumps(ioc.value)) + 1

    async def health(self) -> Health:
        """The tenant lists its URL lists to our token (401/403: the token is refused)."""
        try:
            found = await self._find()
        except (TransientError, AuthError, PermanentError, ComponentConfigError) as exc:
            return Health(ok=False, detail=str(exc))
        state = "does not exist yet" if found is None else f"has id {found[0]}"
        return Health(ok=True, detail=f"URL list {self.name!r} {state}")

    async def push(self, push: Push) -> PushResult:
        rejected: list[tuple[str, str]] = []
        found = await self._find()
        changed = False
        if found is None:
            changed = await self._create(_unique(ioc.value for ioc in push.add), rejected)
            pending = False
        else:
            list_id, pending = found
            current = await self._content(list_id)
            changed = await self._update(list_id, current, push, rejected)
        if self.options.deploy and (changed or pending):
            await self.call("POST", f"{URLLIST}/deploy", read=False)
            self.context.log.info("netskope.url_list_deployed", list=self.name, changed=changed)
        return PushResult(rejected=rejected)

    # -- reading ------------------------------------------------------------------------------

    async def _find(self) -> tuple[int, bool] | None:
        """``(id, pending)`` of the list named ``list`` (not one marked for deletion), or None."""
        fields = [("field", name) for name in ("id", "name", "pending", "modify_type")]
        answer = await self._ok(await self.call("GET", URLLIST, params=fields), "GET " + URLLIST)
        lists = answer.json("GET " + URLLIST)
        if not isinstance(lists, list):
            raise TransientError(f"GET {URLLIST} answered {excerpt(answer.body)}, not an array of lists")
        for item in lists:
            if not isinstance(item, dict) or item.get("name") != self.name:
                continue
            if item.get("modify_type") == "Deleted":
                continue
            return _id_of(item, "GET " + URLLIST), bool(item.get("pending"))
        return None

    async def _content(self, list_id: int) -> list[str]:
        """The list's pending content (what the next deploy applies), in order, duplicates included."""
        path = f"{URLLIST}/{list_id}"
        answer = (await self._ok(await self.call("GET", path), "GET " + path)).json("GET " + path)
        data = answer.get("data") if isinstance(answer, dict) else None
        urls = data.get("urls") if isinstance(data, dict) else None
        if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
            raise TransientError(f"GET {path} answered no data.urls array of strings")
        return urls

    # -- writing ------------------------------------------------------------------------------

    async def _update(
        self, list_id: int, current: list[str], push: Push, rejected: list[tuple[str, str]]
    ) -> bool:
        """Bring an existing list to what ``push`` asks; whether anything was written."""
        held = set(current)
        if push.full:
            wanted = _unique(ioc.value for ioc in push.add)
            if set(wanted) == held and len(current) == len(held):
                return False
            await self._replace(list_id, wanted, rejected)
            return True
        gone = {ioc.value for ioc in push.remove}
        new = [value for value in _unique(ioc.value for ioc in push.add) if value not in held]
        if gone & held:
            kept = [value for value in _unique(current) if value not in gone]
            await self._replace(list_id, kept + new, rejected)
            return True
        return await self._append(list_id, new, rejected)

    async def _create(self, urls: list[str], rejected: list[tuple[str, str]]) -> bool:
        """Create the list with the first batch of ``urls`` and append the rest; whether it exists now.

        A batch whose every entry is invalid creates nothing: the next one tries. A 400 that names no
        entry most likely means a list of that name appeared meanwhile (another writer, or a create
        whose answer was lost): it is looked up again and used, never made a second time.
        """
        batch = self.options.batch
        for start in range(0, len(urls), batch):
            body = {
                "name": self.name,
                "data": {"urls": urls[start : start + batch], "type": self.options.list_type},
            }
            answer = await self._send("POST", URLLIST, body, rejected)
            if answer is None:
                continue
            if answer.status == 400:
                found = await self._find()
                if found is None:
                    self._refuse(answer, "POST " + URLLIST)
                held = set(await self._content(found[0]))
                await self._append(found[0], [url for url in urls[start:] if url not in held], rejected)
                return True
            created = answer.json("POST " + URLLIST)
            first = created[0] if isinstance(created, list) and created else created
            await self._append(_id_of(first, "POST " + URLLIST), urls[start + batch :], rejected)
            return True
        return False

    async def _append(self, list_id: int, urls: Sequence[str], rejected: list[tuple[str, str]]) -> bool:
        """Append ``urls`` in requests of ``batch`` entries; whether any went in (not all were invalid)."""
        written = False
        path = f"{URLLIST}/{list_id}/append"
        for start in range(0, len(urls), self.options.batch):
            body = {
                "data": {
                    "urls": list(urls[start : start + self.options.batch]),
                    "type": self.options.list_type,
                }
            }
            answer = await self._send("PATCH", path, body, rejected)
            if answer is not None and answer.status == 400:
                self._refuse(answer, "PATCH " + path)
            written = written or answer is not None
        return written

    async def _replace(self, list_id: int, urls: list[str], rejected: list[tuple[str, str]]) -> None:
        """Make ``urls`` the list's whole content."""
        path = f"{URLLIST}/{list_id}/replace"
        body = {"data": {"urls": urls, "type": self.options.list_type}}
        answer = await self._send("PATCH", path, body, rejected, keep_empty=True)
        if answer is not None and answer.status == 400:
            self._refuse(answer, "PATCH " + path)

    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        rejected: list[tuple[str, str]],
        *,
        keep_empty: bool = False,
    ) -> Answer | None:
        """Send ``body``; entries the tenant names invalid are dropped and the request sent again.

        Answers the last answer (a 2xx, or a 400 naming none of the entries); None when every entry
        was invalid and ``keep_empty`` is False (nothing left worth sending).
        """
        urls: list[str] = body["data"]["urls"]
        while True:
            body["data"]["urls"] = urls
            answer = await self.call(method, path, body, read=method == "POST")
            if answer.status != 400:
                return answer
            parsed = answer.json(f"{method} {path}")
            invalid = parsed.get("invalid_urls") if isinstance(parsed, dict) else None
            bad = set(invalid) & set(urls) if isinstance(invalid, list) else set()
            bad = {url for url in bad if isinstance(url, str)}
            if not bad:
                return answer
            reason = f"refused by the tenant as an invalid {self.options.list_type} URL-list entry"
            message = error_messages(parsed)
            rejected.extend((url, f"{reason}: {message}" if message else reason) for url in sorted(bad))
            self.context.log.info("netskope.url_list_invalid_entries", list=self.name, dropped=len(bad))
            urls = [url for url in urls if url not in bad]
            if not urls and not keep_empty:
                return None

    def _refuse(self, answer: Answer, target: str) -> NoReturn:
        """Raise the error a 400 that names no invalid entry stands for (a cap, a malformed request)."""
        message = error_messages(_loads(answer.body)) or excerpt(answer.body)
        raise status_error(
            answer.status, f"{self.base}: {target} answered HTTP 400: {message}", answer.headers, target
        )

    async def _ok(self, answer: Answer, target: str) -> Answer:
        """``answer`` when it is a 2xx; the error a 400 stands for otherwise."""
        if answer.status == 400:
            self._refuse(answer, target)
        return answer


def _id_of(item: object, target: str) -> int:
    """The numeric ``id`` of a list object in an answer; TransientError when it has none."""
    list_id = item.get("id") if isinstance(item, dict) else None
    if not isinstance(list_id, int) or isinstance(list_id, bool):
        raise TransientError(f"{target} answered a list without a numeric id: {excerpt(str(item))}")
    return list_id


def _unique(values: Iterable[str]) -> list[str]:
    """``values`` in order, each once."""
    return list(dict.fromkeys(values))


def _loads(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
