"""Access control of the HTTP listener: tokens, roles, sessions, CSRF and throttling, on a running daemon."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from listener_kit import PASSWORD, Answer, add_users, cli, listener_pipeline, listening, make_tokens, request

from ce_daemon.access import Role
from ce_daemon.access.throttle import FailureThrottle
from ce_daemon.daemon import state_migrations
from ce_daemon.jobs import Jobs
from ce_daemon.testing import write_pipeline
from ce_daemon.testing.state import state_dump

HTTP = {"listen": "127.0.0.1:0"}
ROLES = {"viewer": Role.VIEWER, "operator": Role.OPERATOR, "admin": Role.ADMIN, "gone": Role.ADMIN}
ENDPOINTS = [
    ("GET", "metrics", Role.VIEWER),
    ("GET", "readyz", Role.VIEWER),
    ("GET", "api/whoami", Role.VIEWER),
    ("POST", "logout", Role.VIEWER),
    ("POST", "api/reload", Role.OPERATOR),
    ("GET", "api/tokens", Role.ADMIN),
    ("POST", "api/tokens/nobody/revoke", Role.ADMIN),
    ("GET", "no/such/page", Role.VIEWER),
]


def from_address(n: int) -> aiohttp.ClientSession:
    """A client whose connections come from a loopback address of its own (127.0.x.y, one per ``n``)."""
    host = f"127.0.{n // 250}.{n % 250 + 2}"
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(host, 0)))


def browser_session() -> aiohttp.ClientSession:
    """A client that keeps cookies like a browser (those of an IP address too)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_token_create_prints_the_secret_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    """`token create` prints one `ced_` token on stdout; `list` and the database never hold it; `revoke`."""
    config = write_pipeline(tmp_path / "pipeline.yaml", listener_pipeline(tmp_path, HTTP))
    code, out, err = await cli("token", "create", "prometheus", "--role", "viewer", "-c", str(config))
    assert code == 0, err
    [secret] = out.splitlines()
    assert secret.startswith("ced_") and len(secret) >= 60
    assert secret not in err
    again = await cli("token", "create", "prometheus", "--role", "admin", "-c", str(config))
    revoked = await cli("token", "revoke", "prometheus", "-c", str(config))
    listed = await cli("token", "list", "-c", str(config))
    unknown = await cli("token", "revoke", "nobody", "-c", str(config))
    bad_name = await cli("token", "create", "no spaces", "--role", "viewer", "-c", str(config))
    dump = await state_dump(tmp_path / "state" / "db.sqlite", state_migrations(Jobs.discover()))
    assert again[0] == 1 and "exists already" in again[2]
    assert revoked[0] == 0
    assert listed[0] == 0 and "prometheus" in listed[1] and "REVOKED" in listed[1] and "viewer" in listed[1]
    assert unknown[0] == 1 and "no token 'nobody'" in unknown[2]
    assert bad_name[0] == 2 and "a name is" in bad_name[2]
    body = secret.rsplit("_", 1)[1] if secret.count("_") == 2 else secret[17:]
    for text in (*again, *revoked[1:], *listed[1:], dump):
        assert secret[17:] not in str(text) and body not in str(text)


async def test_every_endpoint_refuses_no_credential_a_wrong_or_revoked_token_and_a_lower_role(
    tmp_path: Path,
) -> None:
    """401 with WWW-Authenticate for none, wrong or revoked; 403 below the role needed; else through."""
    tokens = await make_tokens(tmp_path, ROLES)
    wrong = tokens["viewer"][:-4] + ("AAAA" if not tokens["viewer"].endswith("AAAA") else "BBBB")
    answers: list[Answer] = []
    async with listening(tmp_path, HTTP) as listener:
        async with aiohttp.ClientSession() as admin:
            revoked = await request(
                "POST", listener.url + "api/tokens/gone/revoke", token=tokens["admin"], session=admin
            )
        assert revoked.status == 200
        n = 0
        for method, path, needed in ENDPOINTS:
            url = listener.url + path
            for token in (None, wrong, tokens["gone"], "Basic dXNlcjpwYXNz", "ced_"):
                n += 1
                headers = {"Authorization": token} if token and token.startswith(("Basic", "ced_")) else None
                async with from_address(n) as session:
                    bearer = None if headers or token is None else token
                    answer = await request(method, url, token=bearer, headers=headers, session=session)
                answers.append(answer)
                assert answer.status == 401, (method, path, token, answer)
                assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="ce-daemon"')
            for name, role in ROLES.items():
                if name == "gone":
                    continue
                n += 1
                async with from_address(n) as session:
                    answer = await request(method, url, token=tokens[name], session=session)
                answers.append(answer)
                if role.allows(needed):
                    assert answer.status not in (401, 403), (method, path, name, answer)
                else:
                    assert answer.status == 403, (method, path, name, answer)
                    assert f"needs the {needed} role" in answer.text
        output = listener.output()
    for secret in tokens.values():
        assert all(secret not in a.text and secret not in str(a.headers) for a in answers)
        assert secret not in output


async def test_only_healthz_and_what_public_lists_answer_without_a_credential(tmp_path: Path) -> None:
    """/healthz is always open; `public: [/metrics]` opens /metrics and nothing else."""
    async with listening(tmp_path, {**HTTP, "public": ["/metrics"]}) as listener:
        healthz = await request("GET", listener.url + "healthz")
        metrics = await request("GET", listener.url + "metrics")
        readyz = await request("GET", listener.url + "readyz")
    assert healthz.status == 200 and orjson.loads(healthz.text)["live"] is True
    assert metrics.status == 200 and "ce_daemon_build_info" in metrics.text
    assert readyz.status == 401


async def test_failed_credentials_from_one_address_are_throttled_and_others_are_not(tmp_path: Path) -> None:
    """After 10 wrong tokens an address gets 429 and Retry-After, even with a good token; others do not."""
    tokens = await make_tokens(tmp_path, {"viewer": Role.VIEWER})
    async with listening(tmp_path, HTTP) as listener:
        url = listener.url + "api/whoami"
        async with from_address(1) as attacker:
            refused = [
                (await request("GET", url, token="ced_guess", session=attacker)).status for _ in range(10)
            ]
            throttled = await request("GET", url, token="ced_guess", session=attacker)
            good_but_late = await request("GET", url, token=tokens["viewer"], session=attacker)
        async with from_address(2) as other:
            served = await request("GET", url, token=tokens["viewer"], session=other)
        healthz = await request("GET", listener.url + "healthz")
    assert refused == [401] * 10
    assert throttled.status == 429 and int(throttled.headers["Retry-After"]) >= 1
    assert good_but_late.status == 429
    assert served.status == 200 and orjson.loads(served.text) == {
        "name": "viewer",
        "role": "viewer",
        "kind": "token",
    }
    assert healthz.status == 200


def test_a_throttle_refills_one_failure_per_period() -> None:
    """The bucket: `burst` failures, then one more per `every` seconds; a full bucket is forgotten."""
    now = [0.0]
    throttle = FailureThrottle(burst=3, every=10.0, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("a") == 0
        throttle.failed("a")
    assert throttle.retry_after("a") == 10 and throttle.retry_after("b") == 0
    now[0] = 4.0
    assert throttle.retry_after("a") == 6
    now[0] = 10.0
    assert throttle.retry_after("a") == 0
    now[0] = 100.0
    assert throttle.retry_after("a") == 0 and "a" not in throttle._buckets


def test_the_throttle_keeps_a_bounded_number_of_addresses() -> None:
    """A flood of addresses evicts the oldest buckets instead of growing without end."""
    throttle = FailureThrottle(burst=1, every=60.0, max_keys=100, clock=lambda: 0.0)
    for n in range(1000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle._buckets) == 100
    assert throttle.retry_after("10.0.3.231") > 0 and throttle.retry_after("10.0.0.0") == 0


async def test_a_login_gives_a_strict_http_only_cookie_and_writes_need_its_csrf_token(tmp_path: Path) -> None:
    """Login sets an HttpOnly SameSite=Strict cookie; a write with it needs X-CSRF-Token or the form field."""
    await add_users(tmp_path, {"alice": Role.OPERATOR, "victor": Role.VIEWER})
    async with listening(tmp_path, HTTP) as listener, browser_session() as browser:
        url = listener.url
        wrong = await request(
            "POST", url + "login", data={"user": "alice", "password": "nope" * 4}, session=browser
        )
        login = await request(
            "POST", url + "login", data={"user": "alice", "password": PASSWORD}, session=browser
        )
        csrf = orjson.loads(login.text)["csrf_token"]
        whoami = await request("GET", url + "api/whoami", session=browser)
        no_csrf = await request("POST", url + "api/reload", session=browser)
        bad_csrf = await request(
            "POST", url + "api/reload", headers={"X-CSRF-Token": csrf[::-1]}, session=browser
        )
        header = await request("POST", url + "api/reload", headers={"X-CSRF-Token": csrf}, session=browser)
        form = await request("POST", url + "api/reload", data={"csrf_token": csrf}, session=browser)
        await listener.daemon.wait_for_event("daemon.reload_applied")  # two requests may coalesce
        admin_only = await request("GET", url + "api/tokens", session=browser)
        logout_no_csrf = await request("POST", url + "logout", session=browser)
        logout = await request("POST", url + "logout", headers={"X-CSRF-Token": csrf}, session=browser)
        after = await request("GET", url + "api/whoami", session=browser)
        viewer = await request("POST", url + "login", data={"user": "victor", "password": PASSWORD})
        cross_site = await request(
            "POST", url + "login", data={"user": "victor", "password": PASSWORD},
            headers={"Origin": "https://attacker.example"},
        )  # fmt: skip
        output = listener.output()
    assert wrong.status == 401 and "Set-Cookie" not in wrong.headers
    assert login.status == 200
    cookie = login.headers["Set-Cookie"]
    assert cookie.startswith("ced_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP: see test_tls_listener for Secure and __Host-
    assert orjson.loads(whoami.text) == {
        "name": "alice",
        "role": "operator",
        "kind": "session",
        "csrf_token": csrf,
    }
    assert no_csrf.status == 403 and bad_csrf.status == 403 and "CSRF" in no_csrf.text
    assert header.status == 202 and form.status == 202
    assert admin_only.status == 403
    assert logout_no_csrf.status == 403 and logout.status == 200
    assert after.status == 401
    assert viewer.status == 200 and orjson.loads(viewer.text)["role"] == "viewer"
    assert cross_site.status == 403 and "Set-Cookie" not in cross_site.headers
    session_id = cookie.split(";", 1)[0].split("=", 1)[1]
    for answer in (wrong, login, whoami, no_csrf, header, logout, after):
        assert PASSWORD not in answer.text and session_id not in answer.text
    assert PASSWORD not in output and session_id not in output


async def test_failed_logins_are_throttled_per_user_and_per_address(tmp_path: Path) -> None:
    """5 wrong passwords for one user (from 5 addresses) or from one address (for 5 users): then 429."""
    await add_users(tmp_path, {"bob": Role.VIEWER, "carol": Role.VIEWER})
    async with listening(tmp_path, HTTP) as listener:
        url = listener.url + "login"
        per_user = []
        for n in range(5):
            async with from_address(10 + n) as session:
                per_user.append(
                    (
                        await request(
                            "POST", url, data={"user": "bob", "password": "x" * 12}, session=session
                        )
                    ).status
                )
        async with from_address(20) as session:
            bob_right = await request(
                "POST", url, data={"user": "bob", "password": PASSWORD}, session=session
            )
            carol_right = await request(
                "POST", url, data={"user": "carol", "password": PASSWORD}, session=session
            )
        async with from_address(30) as session:
            per_address = [
                (
                    await request("POST", url, data={"user": f"u{n}", "password": "x" * 12}, session=session)
                ).status
                for n in range(5)
            ]
            carol_late = await request(
                "POST", url, data={"user": "carol", "password": PASSWORD}, session=session
            )
        garbage = await request(
            "POST", url, data=b"\xff" * 100_000, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        oversized = await request("POST", url, data={"user": "a" * 300, "password": "b"})
    assert per_user == [401] * 5
    assert bob_right.status == 429 and int(bob_right.headers["Retry-After"]) >= 1
    assert carol_right.status == 200
    assert per_address == [401] * 5
    assert carol_late.status == 429
    assert garbage.status in (400, 413) and oversized.status == 400


@pytest.mark.timeout(180)
def test_no_authorization_header_value_gets_access_or_a_server_error(tmp_path: Path) -> None:
    """Arbitrary `Authorization` values (Bearer-like or not) get 400, 401 or 429: never 2xx, never 5xx."""
    import asyncio

    tokens = asyncio.run(make_tokens(tmp_path, {"viewer": Role.VIEWER}))
    config = write_pipeline(tmp_path / "pipeline.yaml", listener_pipeline(tmp_path, HTTP))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "ce_daemon", "run", "-c", str(config)], stdout=subprocess.PIPE, text=True
    )
    assert daemon.stdout is not None
    try:
        for line in daemon.stdout:
            if '"http.listening"' in line:
                address = urlsplit(orjson.loads(line)["url"])
                break
        else:
            raise AssertionError("the daemon ended before it listened")
        statuses: set[int] = set()
        counter = [0]

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            prefix=st.sampled_from(["", "Bearer ", "bearer ", "Bearer ced_", "Basic ", "Bearer  "]),
            rest=st.text(
                st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=600
            ),
        )
        def probe(prefix: str, rest: str) -> None:
            value = prefix + rest
            counter[0] += 1
            n = counter[0]
            connection = http.client.HTTPConnection(
                address.hostname or "",
                address.port,
                timeout=10,
                source_address=(f"127.1.{n // 250}.{n % 250 + 2}", 0),
            )
            try:
                connection.putrequest("GET", "/api/whoami")
                connection.putheader("Authorization", value.encode("latin-1"))
                connection.endheaders()
                answer = connection.getresponse()
                body = answer.read().decode("utf-8", "replace")
            finally:
                connection.close()
            statuses.add(answer.status)
            assert answer.status in (400, 401, 429), (value, answer.status, body)
            assert tokens["viewer"] not in body

        probe()
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    assert 401 in statuses
    assert tokens["viewer"] not in out
