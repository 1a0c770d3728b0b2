"""A generic webhook receiver, and the machinery the fake vendor servers of this package share.

Every fake listens on loopback (port 0 by default), optionally over TLS, records what it received
(decoded), and can be scripted: the next N requests fail with a given status (and ``Retry-After``),
or are held until the test releases them (a slow peer). ``async with fake as url:`` starts it and
gives its base URL; tests wait on what it received with :meth:`FakeHttpServer.wait_until`, never
with sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hmac
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

_NO_LIMIT = 1 << 34
"""aiohttp's own request cap (``client_max_size``) is lifted: each fake enforces its vendor's cap."""


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as a fake saw it: ``body`` is decoded (gunzipped), ``wire_bytes`` is what was sent."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    wire_bytes: int
    body: bytes
    status: int


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    retry_after: str | None
    body: bytes | None


class FakeHttpServer:
    """Base of the fake vendor servers: lifecycle, TLS, scripting, recording and waiting."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.url: str | None = None
        self.requests: list[ReceivedRequest] = []
        self._failures: list[_Failure] = []
        self._holds = 0
        self._held = 0
        self._released = asyncio.Event()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        """The vendor's endpoints (subclasses)."""
        raise NotImplementedError

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: any free port) and return the base URL."""
        app = web.Application(client_max_size=_NO_LIMIT)
        app.add_routes(list(self.routes()))
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0][1]
        scheme = "https" if self.ssl_context is not None else "http"
        self.url = f"{scheme}://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        """Stop listening; held requests are released first so that nothing hangs."""
        self._released.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- scripting ---------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        status: int = 503,
        *,
        retry_after: float | str | None = None,
        body: bytes | None = None,
    ) -> None:
        """Answer the next ``count`` data requests with ``status`` and the vendor error body (or ``body``)."""
        value = None if retry_after is None else str(retry_after)
        self._failures.extend(_Failure(status, value, body) for _ in range(count))

    def hold_next(self, count: int = 1) -> None:
        """Hold the next ``count`` data requests until :meth:`release_held` (a peer that answers slowly)."""
        self._holds += count
        if self._released.is_set():
            self._released = asyncio.Event()

    def release_held(self) -> None:
        """Let every held request go on to its normal answer."""
        self._released.set()

    @property
    def held(self) -> int:
        """How many requests are being held right now."""
        return self._held

    def error_body(self, status: int) -> bytes:
        """The vendor's error body for a scripted failure (subclasses give their own shape)."""
        return orjson.dumps({"error": HTTPStatus(status).phrase})

    # -- waiting -----------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds; it is checked each time the fake received something."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def changed(self) -> None:
        """Wake up :meth:`wait_until` callers (subclasses call it after recording)."""
        async with self._changed:
            self._changed.notify_all()

    # -- helpers for the handlers ------------------------------------------------------------

    async def intercept(self, request: web.Request) -> web.Response | None:
        """Apply the script: hold the request, or answer it with a queued failure."""
        if self._holds:
            self._holds -= 1
            self._held += 1
            await self.changed()
            try:
                await self._released.wait()
            finally:
                self._held -= 1
        if not self._failures:
            return None
        failure = self._failures.pop(0)
        headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
        body = failure.body if failure.body is not None else self.error_body(failure.status)
        response = web.Response(
            status=failure.status, body=body, headers=headers, content_type="application/json"
        )
        await self.record(request, b"", response.status)
        return response

    async def record(self, request: web.Request, body: bytes, status: int) -> None:
        """Remember ``request`` (with its decoded ``body``) and wake up waiters."""
        self.requests.append(
            ReceivedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                wire_bytes=request.content_length or 0,
                body=body,
                status=status,
            )
        )
        await self.changed()


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer serialised with orjson."""
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


def self_signed_tls(directory: Path, host: str = "127.0.0.1") -> tuple[ssl.SSLContext, Path]:
    """A throwaway CA and a server certificate for ``host``: (server context, path of the CA's PEM).

    For tests of TLS verification: a client trusts the fake only when given the CA file.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ce-daemon test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    try:
        alt_name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt_name = x509.DNSName(host)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, ca_path


# -- the generic webhook receiver ------------------------------------------------------------------


class FakeWebhook(FakeHttpServer):
    """A JSON webhook receiver: a JSON array or NDJSON body on ``path``, by POST or PUT.

    ``auth`` is the (header, expected value) every request must carry (None: no auth); see
    :func:`basic_value` and :func:`bearer_value`. Bodies over ``max_body`` bytes (decoded) get 413.
    ``GET health_path`` answers 200 while ``healthy``, else 503. ``HEAD``/``OPTIONS`` on ``path``
    answer 405 with ``Allow`` once authenticated, as many receivers do.
    """

    def __init__(
        self,
        *,
        path: str = "/hook",
        auth: tuple[str, str] | None = None,
        max_body: int = 1_000_000,
        health_path: str = "/health",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.path = path
        self.auth = auth
        self.max_body = max_body
        self.health_path = health_path
        self.healthy = True
        self.records: list[Any] = []
        self.batches: list[list[Any]] = []

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post(self.path, self._deliver),
            web.put(self.path, self._deliver),
            web.route("HEAD", self.path, self._probe),
            web.options(self.path, self._probe),
            web.get(self.health_path, self._health),
        ]

    def _authorised(self, request: web.Request) -> bool:
        if self.auth is None:
            return True
        header, expected = self.auth
        return hmac.compare_digest(request.headers.get(header, ""), expected)

    def _unauthorised(self) -> web.Response:
        return json_response({"error": "unauthorized"}, 401, {"WWW-Authenticate": 'Basic realm="hook"'})

    async def _probe(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._unauthorised()
        return web.Response(status=405, headers={"Allow": "POST, PUT"})

    async def _health(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._unauthorised()
        if not self.healthy:
            return json_response({"status": "down"}, 503)
        return json_response({"status": "ok"})

    async def _deliver(self, request: web.Request) -> web.Response:
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        if not self._authorised(request):
            await self.record(request, b"", 401)
            return self._unauthorised()
        body = await request.read()
        if len(body) > self.max_body:
            await self.record(request, body, 413)
            return json_response({"error": f"body of {len(body)} bytes is over {self.max_body}"}, 413)
        content_type = request.content_type
        if content_type not in ("application/json", "application/x-ndjson"):
            await self.record(request, body, 415)
            return json_response({"error": f"unsupported content type {content_type}"}, 415)
        try:
            items = _decode(body, ndjson=content_type == "application/x-ndjson")
        except ValueError as exc:
            await self.record(request, body, 400)
            return json_response({"error": f"bad JSON: {exc}"}, 400)
        self.batches.append(items)
        self.records.extend(items)
        await self.record(request, body, 200)
        return json_response({"received": len(items)})


def _decode(body: bytes, *, ndjson: bool) -> list[Any]:
    if ndjson:
        return [orjson.loads(line) for line in body.split(b"\n") if line.strip()]
    items = orjson.loads(body)
    if not isinstance(items, list):
        raise ValueError("the body is not a JSON array")  # noqa: TRY004 - the handler answers 400 for any ValueError
    return items


def basic_value(username: str, password: str) -> str:
    """The ``Authorization`` value of HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def bearer_value(token: str) -> str:
    """The ``Authorization`` value of a bearer token."""
    return f"Bearer {token}"
