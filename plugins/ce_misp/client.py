"""What the MISP source and destination share: connection options, and one JSON call with MISP's errors.

Every call sends ``Authorization: <key>`` and ``Accept: application/json``; an answer is read
within ``max_body`` bytes and must be JSON. Statuses map as every HTTP plugin's do
(:func:`ce_daemon.http.status_error`): 403 (MISP's answer to a refused key) → :class:`AuthError`,
429 and 5xx → :class:`TransientError` with ``Retry-After``. A caller that expects a 404 or a
validation refusal (MISP answers 403 ``{"saved": false, "errors": …}`` for those) asks for the
answer as it is (``accept``) and decides.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Annotated, Any

import aiohttp
import orjson
from pydantic import Field, SecretStr

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    HttpOptions,
    excerpt,
    make_session,
    read_at_most,
    read_body,
    status_error,
    transport_error,
)
from ce_daemon.plugin import Health, PluginContext, Size, TransientError

DEFAULT_MAX_BODY = 64 * 1024**2


class MispOptions(HttpOptions):
    """Where MISP is and how to talk to it: ``url`` (the instance's base), ``key``, ``timeout``, ``tls``."""

    key: SecretStr
    """An API key of a user allowed to read (a source) or to add and delete attributes (a destination)."""
    max_body: Annotated[Size, Field(ge=1024)] = DEFAULT_MAX_BODY
    """The largest answer read (a page of attributes); a larger one fails the poll or push (transient)."""


class Answer:
    """One MISP answer: its status, parsed JSON body (None when empty) and headers."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: Any, headers: Mapping[str, str]) -> None:
        self.status, self.body, self.headers = status, body, headers


class MispClient:
    """One session to one MISP instance, for a source's or a destination's life."""

    def __init__(self, options: MispOptions, context: PluginContext) -> None:
        self.options = options
        self.context = context
        self.base = options.url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session, made on first use (with the key and JSON headers)."""
        if self._session is None:
            self._session = make_session(
                self.options,
                self.context.base_dir,
                Authorization=self.options.key.get_secret_value(),
                Accept="application/json",
            )
        return self._session

    async def close(self) -> None:
        """Close the session (a second call does nothing)."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def call(
        self, method: str, path: str, payload: Any = None, *, accept: Collection[int] = ()
    ) -> Answer:
        """``method path`` with ``payload`` as JSON; a 2xx (or an ``accept``-ed status) answer, parsed.

        Any other status raises its error (with an excerpt of MISP's message); a body that is not
        JSON raises :class:`TransientError` quoting its start.
        """
        target = f"MISP {method} {path}"
        data = None if payload is None else orjson.dumps(payload)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self.session().request(
                method, f"{self.base}{path}", data=data, headers=headers, allow_redirects=False
            ) as response:
                status, answer_headers = response.status, response.headers
                if 200 <= status < 300 or status in accept:
                    raw = await read_body(response, target, self.options.max_body)
                else:  # only what says why
                    raw = await read_at_most(response, ERROR_BODY_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, target) from exc
        if not (200 <= status < 300 or status in accept):
            raise status_error(
                status, f"{target} answered HTTP {status}: {_message(raw)}", answer_headers, target
            )
        try:
            body = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            raise TransientError(
                f"{target} answered HTTP {status} with a body that is not JSON: {excerpt(raw) or '(empty)'}"
            ) from None
        return Answer(status, body, answer_headers)

    async def health(self) -> Health:
        """``/servers/getVersion`` answers with our key: MISP is up and takes it."""
        try:
            answer = await self.call("GET", "/servers/getVersion")
        except Exception as exc:  # noqa: BLE001 -- health reports every failure instead of raising
            return Health(ok=False, detail=str(exc))
        version = answer.body.get("version") if isinstance(answer.body, dict) else None
        if not isinstance(version, str):
            return Health(
                ok=False, detail=f"MISP at {self.base} answered no version: {excerpt(str(answer.body))}"
            )
        return Health(ok=True, detail=f"MISP {excerpt(version, 40)} at {self.base}")


def _message(raw: bytes) -> str:
    """MISP's error message (``{"name", "message", "errors"}``), or the start of the body."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return excerpt(raw) or "(empty body)"
    if isinstance(parsed, dict) and parsed.get("message"):
        errors = parsed.get("errors")
        return excerpt(str(parsed["message"]) + (f" {orjson.dumps(errors).decode()}" if errors else ""))
    return excerpt(raw)


def shape_error(target: str, what: str, body: Any) -> TransientError:
    """The error for an answer that is JSON but not of the shape MISP sends."""
    return TransientError(f"{target} answered {what}: {excerpt(orjson.dumps(body))}")
