"""HTTP plumbing every HTTP plugin shares: TLS options, sessions, and status classification.

Plugins use this instead of each writing their own: verification is on by default, a custom
CA and a client certificate are options, ``Retry-After`` (seconds or an HTTP date) is
honoured, and statuses map onto the core's error taxonomy the same way everywhere:

- 408, 425, 429 and 5xx (except 501, 505) → :class:`TransientError` (retry the batch);
- 401 and 403 → :class:`AuthError` (stop the component, no retry storm);
- any other 4xx → :class:`PermanentError` (dead-letter what was sent).
"""

from __future__ import annotations

import email.utils
import ssl
import time
from pathlib import Path
from typing import Annotated, Any

import aiohttp
from pydantic import Field, SecretStr

from ce_daemon import __version__
from ce_daemon.errors import AuthError, PermanentError, TransientError
from ce_daemon.plugin import PluginOptions

USER_AGENT = f"ce-daemon/{__version__}"
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504, 507, 508, 509, 520, 521, 522, 523, 524})


class TlsOptions(PluginOptions):
    """TLS settings for an outgoing connection (verification on by default)."""

    verify: bool = True
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    min_version: str = "1.2"


class HttpOptions(PluginOptions):
    """What every HTTP target has: where, how long to wait, TLS, extra headers."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    timeout: Annotated[float, Field(gt=0)] = 30.0
    tls: TlsOptions = TlsOptions()
    headers: dict[str, str] = {}


def ssl_context(tls: TlsOptions, base_dir: Path | None = None) -> ssl.SSLContext | bool:
    """An SSL context for ``tls`` (False only when verification is switched off on purpose)."""
    if not tls.verify and tls.client_cert is None:
        return False

    def resolve(path: Path) -> str:
        return str(path if path.is_absolute() or base_dir is None else base_dir / path)

    context = ssl.create_default_context(cafile=resolve(tls.ca_file) if tls.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert is not None:
        context.load_cert_chain(resolve(tls.client_cert), resolve(tls.client_key) if tls.client_key else None)
    return context


def make_session(options: HttpOptions, base_dir: Path | None = None, **headers: str) -> aiohttp.ClientSession:
    """A client session for one target: timeouts, TLS, our User-Agent, the configured headers."""
    return aiohttp.ClientSession(
        headers={"User-Agent": USER_AGENT, **options.headers, **headers},
        timeout=aiohttp.ClientTimeout(total=options.timeout),
        connector=aiohttp.TCPConnector(ssl=ssl_context(options.tls, base_dir), limit=16),
    )


def retry_after(headers: Any, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (it may be a number of seconds or an HTTP date); None when absent."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (now if now is not None else time.time()))


async def raise_for_status(response: aiohttp.ClientResponse, target: str) -> None:
    """Map a non-2xx answer onto the error taxonomy, with a short excerpt of the body."""
    status = response.status
    if 200 <= status < 300:
        return
    body = (await response.text(errors="replace"))[:300].strip().replace("\n", " ")
    message = f"{target} answered HTTP {status}" + (f": {body}" if body else "")
    if status in (401, 403):
        raise AuthError(message)
    if status in RETRYABLE:
        raise TransientError(message, retry_after=retry_after(response.headers))
    raise PermanentError(message)


def transport_error(exc: BaseException, target: str) -> TransientError:
    """A connection-level failure (refused, reset, timeout, TLS) as a transient error."""
    if isinstance(exc, TimeoutError):
        return TransientError(f"{target}: no answer in time")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TransientError(f"{target}: TLS certificate refused: {exc.certificate_error}")
    return TransientError(f"{target}: {type(exc).__name__}: {exc}")


def bearer(token: SecretStr) -> str:
    """An ``Authorization`` value for a bearer token."""
    return f"Bearer {token.get_secret_value()}"
