"""The credentials a feed is fetched with, and an EDL's clients are asked for: basic or bearer."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr

from ce_daemon.http import basic, bearer
from ce_daemon.plugin import PluginOptions


class BasicAuth(PluginOptions):
    """HTTP basic authentication."""

    type: Literal["basic"]
    username: Annotated[str, Field(min_length=1, pattern=r"^[^:\x00-\x1f]+$")]
    password: SecretStr


class BearerAuth(PluginOptions):
    """``Authorization: Bearer <token>``."""

    type: Literal["bearer"]
    token: SecretStr


Auth = Annotated[BasicAuth | BearerAuth, Field(discriminator="type")]


def authorization(auth: BasicAuth | BearerAuth) -> str:
    """The ``Authorization`` header value for ``auth`` (its encoded form is registered as a secret)."""
    if isinstance(auth, BasicAuth):
        return basic(auth.username, auth.password)
    return bearer(auth.token)
