"""OAuth2 client credentials against Microsoft Entra ID, the token cached until shortly before it expires."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import SecretStr

from ce_daemon.http import OAuth2Token

MONITOR_SCOPE = "https://monitor.azure.com/.default"


class EntraToken(OAuth2Token):
    """An access token for one app registration (tenant, client id, client secret) and one scope."""

    def __init__(
        self,
        authority: str,
        tenant_id: str,
        client_id: str,
        client_secret: SecretStr,
        scope: str = MONITOR_SCOPE,
    ) -> None:
        url = f"{authority.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"
        super().__init__(url, target=f"Entra ID token endpoint {url}", principal=f"client_id {client_id}")
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope

    def grant(self) -> Mapping[str, str]:
        return {
            "client_id": self.client_id,
            "client_secret": self._secret.get_secret_value(),
            "grant_type": "client_credentials",
            "scope": self.scope,
        }
