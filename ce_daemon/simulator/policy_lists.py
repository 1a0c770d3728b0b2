"""The policy lists a tenant holds for threat sharing: URL lists and file-hash lists (no I/O).

URL lists follow REST API v2 ``/api/v2/policy/urllist`` (netskope-apiv2-oas
``endpoints/policy/urllist.yaml``): every change lands in the list's *pending* content and only
``deploy`` makes it the *deployed* (applied) content, so a push that dies before its deploy is
visible as pending entries nobody enforces. A list holds at most `URL_LIST_MAX_ENTRIES` entries and
`URL_LIST_MAX_BYTES` of JSON-encoded URLs (the caps CE warns about, ``MAX_IOC_LIMIT`` and
``MAX_SIZE_LIMIT``); a change over either is refused whole, as is one with invalid entries, which
are reported so that a client can drop them and retry.

File-hash lists follow the v1 ``updateFileHashList`` call CE uses: each update replaces the whole
list (a comma-separated string of at most `FILE_HASH_LIST_MAX_BYTES`) and applies at once.

Entries are kept as sent, duplicates included, so a test sees a push that doubled an entry. The
vendor does not document which entries it calls invalid; the simulator refuses what no tenant
could match (`invalid_url`, `invalid_hash`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

URL_LIST_MAX_ENTRIES = 300_000
URL_LIST_MAX_BYTES = 7 * 1024 * 1024
FILE_HASH_LIST_MAX_BYTES = 8 * 1024 * 1024
URL_MAX_LENGTH = 2048
"""Longer entries are refused (the length browsers and proxies cap URLs at)."""
MODIFIED_BY = "Netskope API"

_URL_LIST_TYPES = ("exact", "regex")
_HEX_HASH = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{64}")


class ListError(ValueError):
    """A change the tenant refuses: ``status`` is the HTTP status, ``invalid`` the bad entries."""

    def __init__(self, status: int, message: str, invalid: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.invalid = invalid or []


def invalid_url(entry: object, list_type: str) -> bool:
    """Whether a URL-list entry could never match: not a string, empty, spaces, too long, bad regex."""
    if not isinstance(entry, str) or not entry or len(entry) > URL_MAX_LENGTH:
        return True
    if any(character.isspace() or ord(character) < 0x20 for character in entry):
        return True
    if list_type == "regex":
        try:
            re.compile(entry)
        except re.error:
            return True
    return False


def invalid_hash(entry: str) -> bool:
    """Whether a file-hash entry is neither an MD5 (32 hex digits) nor a SHA-256 (64)."""
    return _HEX_HASH.fullmatch(entry) is None


def encoded_size(urls: list[str]) -> int:
    """The bytes of ``urls`` as a JSON array (what the 7 MB cap counts)."""
    return len(orjson.dumps(urls))


@dataclass(slots=True)
class UrlList:
    """One URL list: its pending content (every change) and deployed content (the last deploy)."""

    id: int
    name: str
    type: str
    urls: list[str]
    deployed: list[str] | None = None
    """None until the first deploy (the list is not applied yet)."""
    deployed_type: str = "exact"
    pending: bool = True
    deleted: bool = False
    modify_type: str = "Created"
    modify_time: str = ""

    def to_api(self, *, applied: bool = False) -> dict[str, Any]:
        """The list as the API returns it: its pending content, or (``applied``) the deployed one."""
        urls, list_type = (self.deployed or [], self.deployed_type) if applied else (self.urls, self.type)
        return {
            "id": self.id,
            "name": self.name,
            "data": {"type": list_type, "urls": list(urls)},
            "pending": 0 if applied else int(self.pending),
            "modify_by": MODIFIED_BY,
            "modify_time": self.modify_time,
            "modify_type": self.modify_type,
        }


@dataclass(slots=True)
class PolicyLists:
    """Every URL list and file-hash list of one tenant, and how many deploys it saw."""

    url_lists: dict[int, UrlList] = field(default_factory=dict)
    file_hash_lists: dict[str, list[str]] = field(default_factory=dict)
    deploys: int = 0
    _next_id: int = 1

    # -- URL lists ---------------------------------------------------------------------------

    def get(self, list_id: int) -> UrlList:
        """The list ``list_id``; ListError 404 when there is none (or it was deleted and deployed)."""
        found = self.url_lists.get(list_id)
        if found is None:
            raise ListError(404, f"URL list with id {list_id} not found")
        return found

    def create(self, body: object) -> UrlList:
        """A new list from ``{name, data: {urls, type}}``, pending until the next deploy."""
        name, urls, list_type = _parse(body, need_name=True)
        assert name is not None
        if any(existing.name == name and not existing.deleted for existing in self.url_lists.values()):
            raise ListError(400, f"URL list name {name!r} already exists")
        created = UrlList(self._next_id, name, list_type or "exact", [], modify_time=_now())
        self._set(created, urls)
        self._next_id += 1
        self.url_lists[created.id] = created
        return created

    def replace(self, list_id: int, body: object) -> UrlList:
        """``PUT``: the whole configuration (name, type, URLs) replaced."""
        found = self.get(list_id)
        name, urls, list_type = _parse(body, need_name=True)
        self._set(found, urls, list_type)
        found.name = name or found.name
        return self._edited(found)

    def patch(self, list_id: int, action: str, body: object) -> UrlList:
        """``PATCH …/{action}``: ``append`` adds the URLs, ``replace`` puts them in place of the old."""
        found = self.get(list_id)
        if action not in ("append", "replace"):
            raise ListError(400, f"Invalid action {action!r}: use append or replace")
        name, urls, list_type = _parse(body, need_name=False)
        self._set(found, found.urls + urls if action == "append" else urls, list_type)
        found.name = name or found.name
        return self._edited(found)

    def delete(self, list_id: int) -> UrlList:
        """Mark the list for deletion at the next deploy."""
        found = self.get(list_id)
        found.deleted, found.modify_type = True, "Deleted"
        return self._edited(found)

    def deploy(self) -> list[UrlList]:
        """Apply every pending change (a deleted list goes); the lists as now applied."""
        self.deploys += 1
        for list_id, url_list in list(self.url_lists.items()):
            if url_list.deleted:
                del self.url_lists[list_id]
            elif url_list.pending:
                url_list.deployed, url_list.deployed_type = list(url_list.urls), url_list.type
                url_list.pending = False
        return list(self.url_lists.values())

    def _set(self, url_list: UrlList, urls: list[str], list_type: str | None = None) -> None:
        """Make ``urls`` the pending content, or refuse the change whole (caps, invalid entries)."""
        checked_type = list_type or url_list.type
        invalid = [url for url in urls if invalid_url(url, checked_type)]
        if invalid:
            raise ListError(400, f"{len(invalid)} invalid URL(s) in data.urls", invalid)
        if len(urls) > URL_LIST_MAX_ENTRIES:
            raise ListError(
                400,
                f"URL list {url_list.name!r} would hold {len(urls)} entries: "
                f"the maximum is {URL_LIST_MAX_ENTRIES}",
            )
        size = encoded_size(urls)
        if size > URL_LIST_MAX_BYTES:
            raise ListError(
                400,
                f"URL list {url_list.name!r} would be {size} bytes: "
                f"the maximum is {URL_LIST_MAX_BYTES} (7 MB)",
            )
        url_list.urls, url_list.type = urls, checked_type

    @staticmethod
    def _edited(url_list: UrlList) -> UrlList:
        url_list.pending, url_list.modify_time = True, _now()
        if not url_list.deleted:
            url_list.modify_type = "Edited"
        return url_list

    # -- file-hash lists ---------------------------------------------------------------------

    def update_file_hashes(self, name: str, hashes: str) -> int:
        """Replace list ``name`` with the comma-separated ``hashes``; how many it now holds."""
        if len(hashes.encode()) > FILE_HASH_LIST_MAX_BYTES:
            raise ListError(
                400, f"File hash list {name!r} is over the maximum of {FILE_HASH_LIST_MAX_BYTES} bytes (8 MB)"
            )
        entries = [entry.strip() for entry in hashes.split(",") if entry.strip()]
        invalid = [entry for entry in entries if invalid_hash(entry)]
        if invalid:
            raise ListError(400, f"{len(invalid)} invalid file hash(es) in list", invalid)
        if self.file_hash_lists.get(name) == entries:
            raise ListError(400, "Duplicate request, no change in file hashes")
        self.file_hash_lists[name] = entries
        return len(entries)

    # -- what a test reads back --------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """Every list's deployed and pending entries, and the deploy count (``GET /_sim/lists``)."""
        return {
            "deploys": self.deploys,
            "url_lists": [
                {
                    "id": url_list.id,
                    "name": url_list.name,
                    "type": url_list.type,
                    "pending": url_list.pending,
                    "deleted": url_list.deleted,
                    "pending_urls": list(url_list.urls),
                    "deployed_urls": list(url_list.deployed or []),
                }
                for url_list in self.url_lists.values()
            ],
            "file_hash_lists": {name: list(hashes) for name, hashes in self.file_hash_lists.items()},
        }


def _parse(body: object, *, need_name: bool) -> tuple[str | None, list[str], str | None]:
    """``(name, urls, type)`` of a ``{name, data: {urls, type}}`` body; ListError 400 when malformed."""
    if not isinstance(body, dict):
        raise ListError(400, "The request body must be a JSON object")
    name = body.get("name")
    if (need_name and not name) or (name is not None and not isinstance(name, str)):
        raise ListError(400, "name is required and must be a string")
    data = body.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("urls", []), list):
        raise ListError(400, "data must be an object whose urls is an array")
    list_type = data.get("type")
    if list_type is not None and list_type not in _URL_LIST_TYPES:
        raise ListError(400, f"Invalid data.type {list_type!r}: use exact or regex")
    return name, list(data.get("urls", [])), list_type


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
