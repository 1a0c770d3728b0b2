"""The ``netskope_file_hash_list`` threat sink: one file-hash list of a Netskope tenant (REST API v1).

``POST /api/v1/updateFileHashList`` ``{name, list: "h1,h2,…", token}`` replaces the whole list and
applies it at once (no deploy), so every push is the whole list (``incremental = False``) and a
push sent again is harmless: the tenant answers "Duplicate request, no change in file hashes",
which is a success. The token travels in the body, and v1 answers its errors as HTTP 200 with
``{"status": "error", "errors": [...]}``; they are classified by their words:

- a refused token (``Invalid token …``) → :class:`AuthError`;
- hashes named in ``invalid_hashes`` are dropped, reported, and the list sent again without them;
- a busy tenant (``try again``, ``timeout``, ``temporarily``) → :class:`TransientError`;
- anything else (the 8 MB cap, a malformed request) → :class:`PermanentError`.

A 429 or 5xx keeps its status and is classified as any HTTP answer. The list holds MD5 and SHA-256
hashes (the tenant refuses other lengths, SHA-1 included); the core keeps it within 8 MB counted as
the comma-joined string it becomes.
"""

from __future__ import annotations

import re

from ce_daemon.http import excerpt
from ce_daemon.plugin import (
    AuthError,
    Health,
    PermanentError,
    Push,
    PushResult,
    TransientError,
)
from ce_netskope.tenant import TenantOptions, TenantSink, error_messages

FILE_HASH_LIST = "/api/v1/updateFileHashList"
MAX_LIST_BYTES = 8 * 1024 * 1024
"""Netskope's cap on one file-hash list: 8 MB of comma-separated hashes."""
_DUPLICATE = re.compile(r"duplicate request|no change", re.IGNORECASE)
_AUTH = re.compile(r"token|unauthori[sz]ed|forbidden|permission|not allowed|authenticat", re.IGNORECASE)
_BUSY = re.compile(r"try again|retry|timed? ?out|temporar|busy|unavailable", re.IGNORECASE)
_MAX_SENDS = 3
"""A list sent again after dropping invalid hashes: the tenant names them all in its first answer."""


class FileHashListOptions(TenantOptions):
    """Options of the ``netskope_file_hash_list`` sink (``token`` is a v1 REST API token)."""


class NetskopeFileHashSink(TenantSink[FileHashListOptions]):
    """Replaces one Netskope file-hash list with the whole list on each push (v1 API)."""

    types = frozenset({"md5", "sha256"})
    incremental = False
    max_bytes = MAX_LIST_BYTES
    """Counted with the default `entry_size`, the value and one separator: the comma-joined list and one."""

    async def health(self) -> Health:
        """A v1 call that changes nothing (no list named): the tenant must not call the token invalid."""
        try:
            parsed = await self._post({"token": self.options.token.get_secret_value()})
        except (TransientError, AuthError, PermanentError) as exc:
            return Health(ok=False, detail=str(exc))
        if isinstance(parsed, dict) and parsed.get("status") == "error":
            message = error_messages(parsed)
            if _AUTH.search(message):
                return Health(ok=False, detail=f"the tenant refused the v1 token: {message}")
        return Health(ok=True, detail=f"file-hash list {self.options.list!r}")

    async def push(self, push: Push) -> PushResult:
        hashes = list(dict.fromkeys(ioc.value for ioc in push.add))
        rejected: list[tuple[str, str]] = []
        for _ in range(_MAX_SENDS):
            body = {
                "name": self.options.list,
                "list": ",".join(hashes),
                "token": self.options.token.get_secret_value(),
            }
            parsed = await self._post(body)
            if not isinstance(parsed, dict):
                raise TransientError(f"{FILE_HASH_LIST} answered {excerpt(str(parsed))}, not an object")
            if parsed.get("status") == "success":
                return PushResult(rejected=rejected)
            message = error_messages(parsed) or excerpt(str(parsed))
            if _DUPLICATE.search(message):
                return PushResult(rejected=rejected)  # the tenant holds this very list already
            invalid = parsed.get("invalid_hashes")
            bad = (
                {value for value in invalid if isinstance(value, str)} & set(hashes)
                if isinstance(invalid, list)
                else set()
            )
            if bad:
                reason = f"refused by the tenant as an invalid file hash: {message}"
                rejected.extend((value, reason) for value in sorted(bad))
                hashes = [value for value in hashes if value not in bad]
                continue
            raise _v1_error(message, self.base)
        raise PermanentError(f"{self.base}{FILE_HASH_LIST}: still refusing hashes after {_MAX_SENDS} sends")

    async def _post(self, body: dict[str, str]) -> object:
        """POST ``body``; its JSON answer (v1 errors are 200s too, for the caller to read)."""
        answer = await self.call("POST", FILE_HASH_LIST, body)
        if answer.status == 400:  # not v1's way, but an HTTP 400 is a refusal all the same
            raise PermanentError(f"{self.base}{FILE_HASH_LIST} answered HTTP 400: {excerpt(answer.body)}")
        return answer.json("POST " + FILE_HASH_LIST)


def _v1_error(message: str, base: str) -> Exception:
    """The error a v1 ``status: error`` answer stands for, by its words."""
    text = f"{base}{FILE_HASH_LIST} answered an error: {message}"
    if _AUTH.search(message):
        return AuthError(text)
    if _BUSY.search(message):
        return TransientError(text)
    return PermanentError(text)
