"""OAuth2 client credentials against Microsoft Entra ID, the token cached until shortly before it expires."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from pydantic import SecretStr

from ce_daemon.errors import AuthError, TransientError
from ce_daemon.http import RETRYABLE, retry_after, transport_error

MONITOR_SCOPE = "https://monitor.azure.com/.default"
_REFRESH_MARGIN = 300.0  # renew five minutes early so a request never leaves with a token about to lapse


class EntraToken:
    """An access token for one app registration (tenant, client id, client secret) and one scope."""

    def __init__(
        self,
        authority: str,
        tenant_id: str,
        client_id: str,
        client_secret: SecretStr,
        scope: str = MONITOR_SCOPE,
    ) -> None:
        self.url = f"{authority.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Forget the cached token (the API refused it: fetch another before the next call)."""
        self._token = None

    async def get(self, session: aiohttp.ClientSession, *, fresh: bool = False) -> str:
        """A valid access token: the cached one, or a new one when none, expiring, or ``fresh``."""
        async with self._lock:
            if fresh or self._token is None or time.monotonic() >= self._renew_at:
                await self._fetch(session)
            assert self._token is not None
            return self._token

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        form = {
            "client_id": self.client_id,
            "client_secret": self._secret.get_secret_value(),
            "grant_type": "client_credentials",
            "scope": self.scope,
        }
        target = f"Entra ID token endpoint {self.url}"
        try:
            async with session.post(self.url, data=form) as response:
                body = await response.read()
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, target) from exc
        try:
            answer = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if status == 200 and isinstance(answer.get("access_token"), str):
            try:
                lifetime = float(answer.get("expires_in", 3600))
            except (TypeError, ValueError):
                lifetime = 3600.0
            self._token = answer["access_token"]
            self._renew_at = time.monotonic() + lifetime - min(_REFRESH_MARGIN, lifetime / 2)
            return
        # error_description's first line is "AADSTSnnnn: reason"; later lines carry trace ids only.
        reason = str(answer.get("error_description") or "").split("\n", 1)[0].strip()[:300]
        message = f"{target} answered HTTP {status}" + (f" {answer['error']}" if answer.get("error") else "")
        message += f": {reason}" if reason else ""
        if status in RETRYABLE:
            raise TransientError(message, retry_after=retry_after(headers))
        raise AuthError(message + f" (client_id {self.client_id})")
