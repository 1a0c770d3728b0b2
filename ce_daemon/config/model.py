"""The pipeline file's shape, as pydantic v2 models (``extra="forbid"`` everywhere).

Structure is validated here; what needs the installed plugins or other modules (a sink's own
options, a filter, subtype names, a mapping file) is resolved afterwards in ``load.py`` so that
every problem of the file is reported in one pass. These are the core's sections: each job's
section model is added to :class:`Pipeline` by :func:`compose_pipeline`.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    create_model,
    field_validator,
    model_validator,
)

from ce_daemon.cluster.settings import ClusterSettings
from ce_daemon.config.values import (
    MAX_TIMEOUT,
    Duration,
    Name,
    SecretOrText,
    SettingError,
    Size,
    Strict,
    Timeout,
    duration_seconds,
)


def _state_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    sqlite = scheme == "sqlite" and rest.startswith("/") and len(rest) > 1
    postgres = scheme in ("postgresql", "postgres") and rest.split("/", 1)[0].rpartition("@")[2]
    if not (sqlite or postgres):
        raise SettingError(
            "not a usable state URL (its text is not repeated: it may hold a password)",
            "use postgresql://user@host:5432/database (password: {$env: NAME}) or sqlite:///path/state.db",
        )
    if postgres:
        _postgres_url(url)
    return url


def _postgres_url(url: str) -> None:
    """Refuse a PostgreSQL URL that carries a password, or whose host or port cannot be used."""
    place = "postgresql://user@host:5432/database, an IPv6 address in brackets: postgresql://user@[::1]/db"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError:
        raise SettingError("not a usable host or port in the state URL (1 to 65535)", place) from None
    secret = sorted({name for name, _ in urllib.parse.parse_qsl(parts.query)} & {"password", "passfile"})
    if secret:
        raise SettingError(
            f"a {secret[0]} in the URL's query (its text is not repeated)",
            "give the password apart as a secret reference: state.password: {$env: NAME}",
        )
    if port == 0 or not parts.hostname:
        raise SettingError("not a usable host or port in the state URL (1 to 65535)", place)


class StateSettings(Strict):
    """Where the state lives (cannot change without a restart).

    ``path`` is the SQLite file (the default backend); its folder is also the data directory. ``url``
    selects another backend: ``postgresql://user@host:5432/db``, its password given apart as a secret
    reference (``password: {$env: NAME}``); ``sqlite:///path`` is the same as ``path``. ``timeout``
    bounds each PostgreSQL statement, commit and wait for a pooled connection.
    """

    path: Path = Path("/var/lib/ce-daemon/state.db")
    url: Annotated[SecretOrText, AfterValidator(_state_url)] | None = None
    password: SecretStr | None = None
    timeout: Annotated[Duration, Field(gt=0, le=3600)] = 30.0

    @model_validator(mode="after")
    def _sqlite_url_is_a_path(self) -> Self:
        if self.url is None:
            if self.password is not None:
                raise SettingError("a password without a url", "give state.url: postgresql://user@host/db")
            return self
        if self.url.startswith("sqlite://"):
            return self.model_copy(update={"path": Path(self.url.removeprefix("sqlite://")), "url": None})
        return self


class LoggingSettings(Strict):
    """Application logs on stdout."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


UNIX_SOCKET_PATH_MAX = 107
"""The longest path of a unix socket, in bytes (Linux's ``sun_path`` holds 108, the final NUL included)."""
_HOST_NAME = r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?"


def unix_socket_path_problem(path: str) -> str | None:
    """Why no unix socket can live at ``path`` whatever the file system holds, or None."""
    length = len(os.fsencode(path))
    if length > UNIX_SOCKET_PATH_MAX:
        return f"a unix socket path is at most {UNIX_SOCKET_PATH_MAX} bytes long, this one has {length}"
    return None


@dataclass(frozen=True, slots=True)
class SyslogTarget:
    """Where health messages go: a local datagram socket (``unix``, ``address`` its path) or a collector."""

    transport: Literal["unix", "udp", "tcp"]
    address: str
    """The socket path, or the collector's host name or address (an IPv6 address without brackets)."""
    port: int = 0


SYSLOG_TARGET_HINT = (
    "a syslog target is /dev/log, unix:/path/to/socket, udp://host:514 or tcp://host:514 "
    "(an IPv6 address in brackets: udp://[::1]:514)"
)


def parse_syslog_target(target: str) -> SyslogTarget:
    """The target ``health.syslog.target`` names; :class:`SettingError` saying what is wrong with it.

    The one reading of a target: ``check`` validates with it and the health channel connects by it.
    """
    if target.startswith(("/", "unix:")):
        path = target.removeprefix("unix:")
        if not path.startswith("/"):
            raise SettingError(
                f"syslog target {target!r}: a socket is named by its absolute path", SYSLOG_TARGET_HINT
            )
        if problem := unix_socket_path_problem(path):
            raise SettingError(f"syslog target {target!r}: {problem}", SYSLOG_TARGET_HINT)
        return SyslogTarget("unix", path)
    scheme, separator, rest = target.partition("://")
    if not separator or scheme not in ("udp", "tcp"):
        message = f"syslog target {target!r} is neither a socket path nor a udp:// or tcp:// address"
        raise SettingError(message, SYSLOG_TARGET_HINT)
    host, colon, port = rest.rpartition(":")
    if not colon or not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        message = f"syslog target {target!r} needs a port from 1 to 65535 after the host"
        raise SettingError(message, SYSLOG_TARGET_HINT)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            message = f"syslog target {target!r}: {host!r} is not an IPv6 address"
            raise SettingError(message, SYSLOG_TARGET_HINT) from None
    elif not re.fullmatch(_HOST_NAME, host):
        message = f"syslog target {target!r} needs the collector's host name or address"
        raise SettingError(message, SYSLOG_TARGET_HINT)
    return SyslogTarget("udp" if scheme == "udp" else "tcp", host, int(port))


def _syslog_target(value: str) -> str:
    parse_syslog_target(value)
    return value


class SyslogSettings(Strict):
    """The health channel: state changes and heartbeats, separate from application logs."""

    enabled: bool = True
    target: Annotated[str, AfterValidator(_syslog_target)] = "/dev/log"
    """A local datagram socket (``/dev/log``, ``unix:/path``) or a collector (``udp://host:port``,
    ``tcp://host:port``): see :func:`parse_syslog_target`."""
    format: Literal["local", "rfc5424"] = "local"
    facility: Literal[
        "daemon", "user", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"
    ] = "daemon"


class HealthSettings(Strict):
    """Heartbeat cadence and where health goes."""

    interval: Annotated[Duration, Field(ge=1, le=86400)] = 300.0
    """At least a second (each heartbeat also saves a status snapshot, a query over the spool), at most
    a day."""
    syslog: SyslogSettings = SyslogSettings()


class ControlSettings(Strict):
    """The local socket ``ce-daemon status`` asks; defaults to ``control.sock`` beside the state database."""

    socket: Path | None = None


def _listen_address(value: str) -> str:
    split_listen(value)
    return value


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` → (host to bind, port); ValueError saying what is wrong."""
    host, colon, port = listen.rpartition(":")
    if not colon or not re.fullmatch(r"[0-9]+", port):
        raise ValueError("an address to listen on is host:port, e.g. 127.0.0.1:9464 or [::1]:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets: [::1]:9464")
    elif not re.fullmatch(_HOST_NAME, host):
        raise ValueError("give the address or host name to listen on (0.0.0.0 for every interface)")
    if len(port) > 5 or int(port) > 65535:
        raise ValueError(f"port {port} is out of range (0-65535; 0 lets the system choose)")
    return host, int(port)


class ListenerTls(Strict):
    """TLS on the HTTP listener: your certificate and key, or a self-signed pair made on first start.

    ``min_version`` is 1.3 unless 1.2 is asked for (clients older than TLS 1.2 are always refused).
    """

    cert: Path | None = None
    key: Path | None = None
    self_signed: bool = False
    min_version: Literal["1.2", "1.3"] = "1.3"

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.self_signed and (self.cert or self.key):
            raise ValueError("give either cert and key, or self_signed: true, not both")
        if not self.self_signed and (self.cert is None or self.key is None):
            raise ValueError("TLS needs both `cert` and `key` (PEM files), or `self_signed: true`")
        return self


def _issuer(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError("the issuer is an https:// URL (http:// only on this machine's loopback)")
    if parts.query or parts.fragment:
        raise ValueError("the issuer has no query or fragment")
    return value.rstrip("/")


class OidcSettings(Strict):
    """Single sign-on for the dashboard through an OpenID Connect provider (authorisation-code flow with
    PKCE). The provider is found at ``issuer`` (its ``/.well-known/openid-configuration``); a user's role
    comes from the ``role_claim`` of their ID token, mapped by ``roles`` (the highest role whose values
    the claim holds; none: the login is refused)."""

    issuer: Annotated[str, AfterValidator(_issuer)]
    client_id: Annotated[str, Field(min_length=1, max_length=255)]
    client_secret: SecretStr | None = None
    """Sent to the token endpoint (HTTP Basic) when the client is confidential; PKCE is used either way."""
    scopes: list[str] = ["openid", "email", "profile"]
    role_claim: Annotated[str, Field(min_length=1)] = "groups"
    name_claim: Annotated[str, Field(min_length=1)] = "email"
    """The claim that names the user (``sub`` when the token lacks it)."""
    roles: dict[Literal["viewer", "operator", "admin"], list[str]]
    """Per role, the values of ``role_claim`` that give it: ``{admin: [ce-admins], viewer: [soc]}``."""
    timeout: Annotated[Duration, Field(gt=0, le=120)] = 10.0

    @model_validator(mode="after")
    def _sane(self) -> Self:
        if "openid" not in self.scopes:
            raise ValueError("`scopes` must hold `openid`")
        if not any(self.roles.values()):
            raise ValueError("`roles` gives no role to any value of the role claim: nobody could log in")
        return self


PUBLIC_PATHS = ("/metrics", "/readyz")
"""The endpoints a pipeline may open to callers without a credential (``/healthz`` always is)."""


class HttpSettings(Strict):
    """The HTTP listener: /metrics (Prometheus), /healthz and /readyz. Off when the section is absent.

    Every endpoint but ``/healthz`` asks for a credential (an API token, or a dashboard session)
    unless ``public`` lists it: a scraper or probe that cannot send a token is a choice written down.
    """

    listen: Annotated[str, AfterValidator(_listen_address)] = "127.0.0.1:9464"
    public: list[Literal["/metrics", "/readyz"]] = []
    tls: ListenerTls | None = None
    session_ttl: Annotated[Duration, Field(gt=0, le=7 * 86400)] = 8 * 3600.0
    oidc: OidcSettings | None = None

    @property
    def host(self) -> str:
        """The address to bind (an IPv6 address without its brackets)."""
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port to bind (0: the system chooses one, logged as ``http.listening``)."""
        return split_listen(self.listen)[1]


class SpoolSettings(Strict):
    """The durable buffer between the Netskope pollers and the consumers."""

    max_bytes: Size = 1024**3


_LAST_MOMENT = 253402300799.0  # 9999-12-31T23:59:59Z, the last instant a datetime can hold


def _moment(value: object) -> object:
    """A point in time as epoch seconds: a date, ``now``, an epoch, or a duration counting back from now."""
    if value is None or value == "now":
        return None
    if isinstance(value, datetime):
        return _within_dates(as_aware(value).timestamp())
    if isinstance(value, str) and re.match(r"\d{4}-\d\d-\d\d", value):
        try:
            return _within_dates(as_aware(datetime.fromisoformat(value)).timestamp())
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"not a valid date and time: {exc}") from exc
    seconds = duration_seconds(value)
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return _within_dates(float(seconds) if seconds > 1e9 else time.time() - float(seconds))
    raise ValueError("a time is `now`, an ISO date (2026-11-01T00:00:00Z), or how long ago (24h, 7d)")


def _within_dates(epoch: float) -> float:
    if not (math.isfinite(epoch) and 0 <= epoch <= _LAST_MOMENT):
        raise ValueError("a time must lie between 1970-01-01 and 9999-12-31")
    return epoch


def as_aware(moment: datetime) -> datetime:
    """``moment`` with UTC as its zone when it has none."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


Moment = Annotated[float | None, BeforeValidator(_moment)]


class Lookback(Strict):
    """A one-off historical pull on its own iterator, from ``start`` until ``end`` (epoch seconds)."""

    start: Moment
    end: Moment = None


_TENANT_URL_HINT = "the tenant's address, e.g. https://example.goskope.com"


class Tenant(Strict):
    """One Netskope tenant: where it is, how to authenticate, how fast to ask."""

    name: Name
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(:\d+)?/?$")]
    token: SecretStr
    rate_limit: Annotated[float, Field(gt=0, le=100)] = 4.0
    timeout: Timeout = 120.0
    verify_tls: bool = True
    ca_file: Path | None = None
    page_size_hint: Annotated[int, Field(gt=0, le=10_000)] = 10_000
    start: Moment = None
    lookback: Lookback | None = None
    max_retry_delay: Annotated[Duration, Field(gt=0, le=86400)] = 900.0
    """More than zero (zero retries in a busy loop), at most a day."""
    max_wait_time: Duration = 300.0
    """The longest pause a page's ``wait_time`` may impose; larger or invalid values are corrected."""
    max_page_bytes: Size = 64 * 1024**2
    """The largest answer taken, counted after decompression (a 10,000-record page is ~15 MB)."""

    @field_validator("url")
    @classmethod
    def _usable_url(cls, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        try:
            parts.port  # noqa: B018 - urllib checks the port's range only when it is read
        except ValueError:
            raise SettingError(f"{url!r} has a port outside 1-65535", _TENANT_URL_HINT) from None
        if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
            raise SettingError(
                f"{url!r} would send the API token unencrypted: plain http is only for a loopback "
                "address (such as the tenant simulator)",
                _TENANT_URL_HINT,
            )
        return url


class Pipeline(Strict):
    """The core's sections of the pipeline file; each job adds its own (see :func:`compose_pipeline`)."""

    version: Literal[1] = 1
    state: StateSettings = StateSettings()
    logging: LoggingSettings = LoggingSettings()
    health: HealthSettings = HealthSettings()
    control: ControlSettings = ControlSettings()
    shutdown_grace: Annotated[Duration, Field(le=MAX_TIMEOUT)] = 30.0
    spool: SpoolSettings = SpoolSettings()
    http: HttpSettings | None = None
    tenants: list[Tenant] = []
    cluster: ClusterSettings | None = None
    """This node's part in a cluster (only with a PostgreSQL state: ``check`` refuses it on SQLite)."""


def anchor_paths(config: Pipeline, base: Path) -> Pipeline:
    """``config`` with relative state, control and tenant CA paths made absolute (against its folder)."""
    tenants = [
        t.model_copy(update={"ca_file": base / t.ca_file})
        if t.ca_file is not None and not t.ca_file.is_absolute()
        else t
        for t in config.tenants
    ]
    state = (
        config.state.model_copy(update={"path": base / config.state.path})
        if not config.state.path.is_absolute()
        else config.state
    )
    socket = config.control.socket
    control = (
        config.control.model_copy(update={"socket": base / socket})
        if socket and not socket.is_absolute()
        else config.control
    )
    http = config.http
    if http is not None and http.tls is not None and http.tls.cert is not None and http.tls.key is not None:
        tls = http.tls.model_copy(update={"cert": base / http.tls.cert, "key": base / http.tls.key})
        http = http.model_copy(update={"tls": tls})
    return config.model_copy(update={"state": state, "control": control, "tenants": tenants, "http": http})


@functools.cache
def compose_pipeline(sections: tuple[tuple[str, type[BaseModel]], ...]) -> type[Pipeline]:
    """The model of a whole file: :class:`Pipeline` plus one section per job ``(name, model)``.

    A job's section is optional (its model's defaults apply), and a key that is neither the core's
    nor a job's is an unknown key, with the nearest name as a hint.
    """
    if not sections:
        return Pipeline
    fields: dict[str, Any] = {name: (model, Field(default_factory=model)) for name, model in sections}
    composed: type[Pipeline] = create_model("Pipeline", __base__=Pipeline, __doc__=Pipeline.__doc__, **fields)
    return composed


RESTART_ONLY: tuple[tuple[str, ...], ...] = (("state",), ("control",))
"""Sections a reload cannot change: the running process keeps its database and socket."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
