"""The listener's gate: who a request comes from, and whether that role may do what it asks.

Every route declares the least role it needs with :func:`requires` (or :func:`public`); a handler that
declares nothing needs ``admin`` (default deny), and a path no route matches needs a credential before it
is told 404. A credential is an API token (``Authorization: Bearer ced_…``) or a dashboard session
cookie; a write (any method but GET, HEAD, OPTIONS) made with the cookie must repeat the session's CSRF
token (header ``X-CSRF-Token`` or form field ``csrf_token``), since a browser sends cookies on a
forged cross-site form too. Answers: 401 with ``WWW-Authenticate`` for no credential or a wrong,
revoked or expired one; 403 for a role too low or a missing CSRF token; 429 with ``Retry-After`` once
an address has failed too often. No answer and no log line repeats a credential.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar
from urllib.parse import urlencode, urlsplit

import aiohttp
import structlog
from aiohttp import web

from ce_daemon.access.credentials import MAX_PASSWORD, Principal, Role
from ce_daemon.access.oidc import LoginRefusedError, OidcClient
from ce_daemon.access.store import AccessStore, AuditLog, csrf_matches
from ce_daemon.access.throttle import FailureThrottle
from ce_daemon.store import StoreError

log = structlog.get_logger("ce_daemon.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HandlerT = TypeVar("HandlerT", bound=Callable[..., Awaitable[web.StreamResponse]])
PRINCIPAL: Final = "ce_daemon.principal"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE = "ced_session"
SECURE_COOKIE = "__Host-ced_session"
"""With TLS the cookie is ``Secure`` with the ``__Host-`` prefix: no other host nor plain HTTP may set it."""
CSRF_HEADER = "X-CSRF-Token"
MAX_AUTHORIZATION = 512
MAX_LOGIN_FORM = 8192
CHALLENGE = 'Bearer realm="ce-daemon"'
NO_CREDENTIAL = "credential required"
_ROLE_ATTRIBUTE = "_ce_daemon_role"
_PUBLIC = "public"


def requires(role: Role) -> Callable[[HandlerT], HandlerT]:
    """Declare that ``role`` (or above) may call the decorated handler (a function or a method)."""

    def mark(handler: HandlerT) -> HandlerT:
        setattr(handler, _ROLE_ATTRIBUTE, role)
        return handler

    return mark


def public(handler: HandlerT) -> HandlerT:
    """Declare that anyone may call the decorated handler (liveness, the login form)."""
    setattr(handler, _ROLE_ATTRIBUTE, _PUBLIC)
    return handler


def needed_role(handler: Any) -> Role | None:
    """The least role ``handler`` needs; None for a public one; ``admin`` when it declares nothing."""
    declared = getattr(handler, _ROLE_ATTRIBUTE, Role.ADMIN)
    return None if declared == _PUBLIC else Role(declared)


def principal(request: web.Request) -> Principal:
    """Who made ``request`` (on a route that needs a role: the gate has set it)."""
    return request[PRINCIPAL]  # type: ignore[no-any-return]


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error answer: ``{"error": message}`` (the message never quotes the request)."""
    return web.json_response({"error": message}, status=status, headers=headers)


class Guard:
    """The authentication middleware, the login and logout endpoints, and their throttles."""

    def __init__(
        self,
        access: AccessStore,
        audit: AuditLog,
        *,
        secure: bool,
        session_ttl: float,
        open_paths: frozenset[str] = frozenset(),
        failures: FailureThrottle | None = None,
        logins: FailureThrottle | None = None,
        oidc: OidcClient | None = None,
    ) -> None:
        self.access = access
        self.audit = audit
        self.secure = secure
        self.session_ttl = session_ttl
        self.open_paths = open_paths
        """Paths the pipeline opened to anyone (``http.public``)."""
        self.failures = failures or FailureThrottle()
        """Failed credentials per client address."""
        self.logins = logins or FailureThrottle(burst=5, every=60.0)
        """Failed logins per user name and per address."""
        self.cookie = SECURE_COOKIE if secure else COOKIE
        self.oidc = oidc
        """Single sign-on through an OpenID Connect provider (None: local users only)."""

    def add_routes(self, app: web.Application) -> None:
        """Add ``POST /login``, ``POST /logout`` and ``GET /api/whoami``."""
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/api/whoami", self.whoami)
        if self.oidc is not None:
            app.router.add_get(SSO_PAGE, self.sso_begin)
            app.router.add_get(SSO_CALLBACK, self.sso_finish)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Let the request through to ``handler`` only with a credential of the role it needs."""
        route = request.match_info.route
        matched = request.match_info.http_exception is None
        needed = needed_role(route.handler) if matched else Role.VIEWER
        try:
            if needed is None or (matched and request.path in self.open_paths):
                return await handler(request)
            refused = await self._gate(request, needed)
            return refused if refused is not None else await handler(request)
        except StoreError as exc:  # fail closed: no check, no audit row, no access, and no 500
            log.error("access.store_unavailable", path=request.path[:200], error=str(exc))
            return error(503, "the state database is unavailable", {"Retry-After": "5"})

    async def _gate(self, request: web.Request, needed: Role) -> web.Response | None:
        """The refusal of ``request`` (None: let it through, its principal set, a token's write audited)."""
        address = client_address(request)
        wait = self.failures.retry_after(address)
        if wait:
            return error(429, "too many failed credentials from this address", {"Retry-After": str(wait)})
        who, refusal = await self.identify(request)
        if who is None and refusal == NO_CREDENTIAL and request.method == "GET" and is_page(request.path):
            # a person's browser without a session: to the login form, and back here after it
            raise web.HTTPSeeOther(f"{LOGIN_PAGE}?{urlencode({'next': request.path_qs[:500]})}")
        if who is None:
            self.failures.failed(address)
            log.warning("access.refused", address=address, path=request.path[:200], reason=refusal)
            challenge = CHALLENGE if refusal == NO_CREDENTIAL else CHALLENGE + ', error="invalid_token"'
            return error(401, refusal, {"WWW-Authenticate": challenge})
        if not who.role.allows(needed):
            log.warning("access.forbidden", actor=who.actor, address=address, path=request.path[:200])
            return error(403, f"this needs the {needed} role")
        write = request.method not in SAFE_METHODS
        if write and who.kind == "session" and not csrf_matches(who.csrf, await csrf_given(request)):
            log.warning("access.csrf_refused", actor=who.actor, address=address, path=request.path[:200])
            return error(403, "a write with the session cookie needs its CSRF token")
        request[PRINCIPAL] = who
        if write:  # every write through the listener (approve, retry, mute, replay, reload…), by whom
            await self.audit.record(
                f"{who.kind}.write",
                actor=who.actor,
                address=address,
                detail=f"{request.method} {request.path_qs[:300]}",
            )
        return None

    async def identify(self, request: web.Request) -> tuple[Principal | None, str]:
        """Who ``request`` comes from, or None and why not (in words that quote nothing of it)."""
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token or len(header) > MAX_AUTHORIZATION:
                return None, "expected Authorization: Bearer <token>"
            who = await self.access.verify_token(token.strip())
            return who, "token unknown, wrong or revoked"
        session = request.cookies.get(self.cookie)
        if session:
            return await self.access.session(session[:MAX_AUTHORIZATION]), "session expired or unknown"
        return None, NO_CREDENTIAL

    # -- login and logout -------------------------------------------------------------------------

    @public
    async def login(self, request: web.Request) -> web.Response:
        """``POST /login`` (form ``user``, ``password``): a session cookie, and its CSRF token in the body."""
        address = client_address(request)
        if not same_origin(request):
            return error(403, "a login comes from the listener's own pages (Origin differs)")
        if request.content_length is not None and request.content_length > MAX_LOGIN_FORM:
            return error(413, f"a login form has at most {MAX_LOGIN_FORM} bytes")
        form = await request.post()
        user, password = form.get("user"), form.get("password")
        if not isinstance(user, str) or not isinstance(password, str) or not user or len(user) > 200:
            return error(400, "a login posts the form fields user and password")
        keys = (f"address:{address}", f"user:{user}")
        wait = max(self.logins.retry_after(key) for key in keys)
        if wait:  # logged, not a row each: a flood of throttled attempts must not fill the table
            log.warning("access.login_throttled", user=user[:64], address=address)
            return error(429, "too many failed logins: try again later", {"Retry-After": str(wait)})
        role = await self.access.check_password(user, password[: MAX_PASSWORD + 1])
        if role is None:
            for key in keys:
                self.logins.failed(key)
            await self.audit.record("login", "failed", actor=f"user:{user}", address=address)
            back = form.get("next")
            if isinstance(back, str) and is_page(back.split("?", 1)[0]) and not back.startswith("//"):
                raise web.HTTPSeeOther(f"{LOGIN_PAGE}?{urlencode({'next': back, 'failed': '1'})}")
            return error(401, "wrong user or password", {"WWW-Authenticate": CHALLENGE})
        session, csrf = await self.access.open_session(user, self.session_ttl)
        await self.audit.record("login", actor=f"user:{user}", address=address)
        back = form.get("next")
        if isinstance(back, str) and is_page(back.split("?", 1)[0]) and not back.startswith("//"):
            response: web.Response = web.HTTPSeeOther(back)  # the login form's post: back to the page
        else:
            response = web.json_response({"user": user, "role": str(role), "csrf_token": csrf})
        response.set_cookie(
            self.cookie, session, max_age=int(self.session_ttl), path="/", secure=self.secure,
            httponly=True, samesite="Strict",
        )  # fmt: skip
        return response

    # -- single sign-on -----------------------------------------------------------------------------

    def _provider(self) -> aiohttp.ClientSession:
        assert self.oidc is not None
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.oidc.settings.timeout))

    @public
    async def sso_begin(self, request: web.Request) -> web.Response:
        """``GET /login/oidc?next=…``: to the provider, which sends the browser back to the callback."""
        assert self.oidc is not None
        back = request.query.get("next", "/ui/")
        if not is_page(back.split("?", 1)[0]) or back.startswith("//"):
            back = "/ui/"
        redirect = f"{'https' if self.secure else 'http'}://{request.host}{SSO_CALLBACK}"
        try:
            async with self._provider() as session:
                target = await self.oidc.begin(session, redirect, back)
        except (LoginRefusedError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("access.sso_unavailable", error=str(exc)[:300])
            said = urlencode({"sso_error": "the provider cannot be reached"})
            raise web.HTTPSeeOther(f"{LOGIN_PAGE}?{said}") from None
        raise web.HTTPSeeOther(target)

    @public
    async def sso_finish(self, request: web.Request) -> web.Response:
        """``GET /login/oidc/callback``: the provider's answer checked, a session with the claim's role."""
        assert self.oidc is not None
        address = client_address(request)
        key = f"address:{address}"
        wait = self.logins.retry_after(key)
        if wait:
            return error(429, "too many failed logins: try again later", {"Retry-After": str(wait)})
        query = {k: v[:4096] for k, v in request.query.items()}
        try:
            async with self._provider() as session:
                signed = await self.oidc.finish(session, query)
        except (LoginRefusedError, aiohttp.ClientError, TimeoutError) as exc:
            reason = (
                str(exc)[:200] if isinstance(exc, LoginRefusedError) else "the provider cannot be reached"
            )
            self.logins.failed(key)
            await self.audit.record("login", "failed", actor="sso", address=address, detail=reason)
            raise web.HTTPSeeOther(f"{LOGIN_PAGE}?{urlencode({'sso_error': reason})}") from None
        session_id, _ = await self.access.open_session(signed.name, self.session_ttl, signed.role)
        await self.audit.record(
            "login", actor=f"user:{signed.name}", address=address, detail=f"sso {signed.role}"
        )
        response = web.HTTPSeeOther(signed.next)
        # Lax, not Strict: the browser arrives from the provider's site, and the redirect that follows
        # would not carry a Strict cookie. Reads only ride on it: a write still needs the CSRF token.
        response.set_cookie(
            self.cookie, session_id, max_age=int(self.session_ttl), path="/", secure=self.secure,
            httponly=True, samesite="Lax",
        )  # fmt: skip
        return response

    @requires(Role.VIEWER)
    async def logout(self, request: web.Request) -> web.Response:
        """``POST /logout``: the session ends (a token has none: 400)."""
        who = principal(request)
        session = request.cookies.get(self.cookie)
        if who.kind != "session" or not session:
            return error(400, "only a dashboard session logs out")
        await self.access.close_session(session)
        await self.audit.record("logout", actor=who.actor, address=client_address(request))
        from_page = request.content_type == "application/x-www-form-urlencoded"
        response: web.Response = (
            web.HTTPSeeOther(LOGIN_PAGE) if from_page else web.json_response({"logged_out": True})
        )
        response.del_cookie(self.cookie, path="/")
        return response

    @requires(Role.VIEWER)
    async def whoami(self, request: web.Request) -> web.Response:
        """``GET /api/whoami``: the caller's name, role and kind (a session's CSRF token, for forms)."""
        who = principal(request)
        body: dict[str, Any] = {"name": who.name, "role": str(who.role), "kind": who.kind}
        if who.csrf is not None:
            body["csrf_token"] = who.csrf
        return web.json_response(body)


async def csrf_given(request: web.Request) -> str | None:
    """The CSRF token a write repeats: the header, else a form's ``csrf_token`` field."""
    header = request.headers.get(CSRF_HEADER)
    if header is not None:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        if request.content_length is not None and request.content_length > MAX_LOGIN_FORM:
            return None
        value = (await request.post()).get("csrf_token")
        return value if isinstance(value, str) else None
    return None


LOGIN_PAGE: Final = "/login"
SSO_PAGE: Final = "/login/oidc"
SSO_CALLBACK: Final = "/login/oidc/callback"
PAGES: Final = "/ui"


def is_page(path: str) -> bool:
    """Whether ``path`` is one of the dashboard's pages (a person's browser asks for those)."""
    return path in ("/", PAGES) or path.startswith(PAGES + "/")


def same_origin(request: web.Request) -> bool:
    """Whether a browser's ``Origin`` (when it sends one) is the listener itself: a login form posted from
    another site would sign the victim into the attacker's account (login CSRF), and no cookie exists yet
    for a CSRF token to be tied to."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


def client_address(request: web.Request) -> str:
    """The peer's address (the listener is reached directly: no proxy header is trusted)."""
    remote = request.remote or "unknown"
    try:
        return str(ipaddress.ip_address(remote))
    except ValueError:
        return remote[:64]
