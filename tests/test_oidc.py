"""Single sign-on through OpenID Connect (authorisation code with PKCE) against a small local provider:
a person is sent to the provider and back, the session holds the role the claim gives; every way an ID
token can be wrong is refused and audited; a login's state is good once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from listener_kit import Listener, audit_events, listening

from ce_daemon.testing.fakes.oidc import FakeIdentityProvider

SECRET_ENV = "CE_TEST_OIDC_SECRET"


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdentityProvider]:
    provider = FakeIdentityProvider()
    async with provider:
        yield provider


@pytest.fixture
async def listener(
    tmp_path: Path, idp: FakeIdentityProvider, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Listener]:
    monkeypatch.setenv(SECRET_ENV, idp.client_secret)
    oidc = {"issuer": idp.url, "client_id": idp.client_id, "client_secret": {"$env": SECRET_ENV},
            "roles": {"operator": ["soc"], "admin": ["ce-admins"], "viewer": ["auditors"]}}  # fmt: skip
    async with listening(tmp_path, {"listen": "127.0.0.1:0", "oidc": oidc}) as running:
        yield running


async def follow(session: aiohttp.ClientSession, url: str, hops: int = 6) -> tuple[str, int]:
    """Follow redirects one by one (the cookie jar keeps what each sets): the last URL and its status."""
    for _ in range(hops):
        async with session.get(url, allow_redirects=False) as answer:
            if answer.status not in (302, 303):
                return url, answer.status
            url = str(answer.url.join(aiohttp.client.URL(answer.headers["Location"])))
    raise AssertionError("too many redirects")


async def test_a_person_signs_in_through_the_provider_with_the_claims_role(
    listener: Listener, idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.get(listener.url + "login") as answer:
            assert "log in with single sign-on" in await answer.text()
        last, status = await follow(browser, listener.url + "login/oidc?next=/ui/")
        assert status == 200 and last.endswith("/ui/")
        async with browser.get(listener.url + "api/whoami") as answer:
            who = await answer.json()
        assert (
            who["name"] == "sso:alice@example.com" and who["role"] == "operator" and who["kind"] == "session"
        )
    form = idp.token_requests[-1]
    assert form["code_verifier"] and form["grant_type"] == "authorization_code"
    idp.claims = {"sub": "u-2", "email": "root@example.com", "groups": ["soc", "ce-admins"]}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        await follow(browser, listener.url + "login/oidc?next=/ui/")
        async with browser.get(listener.url + "api/whoami") as answer:
            assert (await answer.json())["role"] == "admin"  # the highest role the claim gives
    logins = [e for e in await audit_events(tmp_path) if e["action"] == "login" and e["outcome"] == "ok"]
    assert [e["actor"] for e in logins] == ["user:sso:alice@example.com", "user:sso:root@example.com"]


@pytest.mark.parametrize(
    "tamper", ["signature", "nonce", "expired", "issuer", "audience", "alg_none", "unknown_key"]
)
async def test_a_wrong_id_token_is_refused(
    listener: Listener, idp: FakeIdentityProvider, tamper: str
) -> None:
    idp.tamper = tamper
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        last, _ = await follow(browser, listener.url + "login/oidc?next=/ui/")
        assert "/login?" in last and "sso_error" in last, last
        reason = parse_qs(urlsplit(last).query)["sso_error"][0]
        assert reason.startswith("the ID token"), reason
        async with browser.get(listener.url + "api/whoami") as answer:
            assert answer.status == 401  # no session was opened
        async with browser.get(last) as answer:
            assert "single sign-on refused" in await answer.text()


async def test_a_user_without_a_role_a_used_state_and_an_unknown_one_are_refused(
    listener: Listener, idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    idp.claims = {"sub": "u-3", "email": "guest@example.com", "groups": ["guests"]}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        last, _ = await follow(browser, listener.url + "login/oidc")
        assert "no+role+is+given" in last
    idp.claims = {"sub": "u-1", "email": "alice@example.com", "groups": ["soc"]}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(listener.url + "login/oidc", allow_redirects=False) as answer:
            authorize = answer.headers["Location"]
        async with browser.get(authorize, allow_redirects=False) as answer:
            callback = answer.headers["Location"]
        async with browser.get(callback, allow_redirects=False) as answer:
            assert answer.status == 303 and "sso_error" not in answer.headers["Location"]
        async with browser.get(callback, allow_redirects=False) as answer:  # the same state again
            assert "was+not+begun+here" in answer.headers["Location"]
        forged = listener.url + "login/oidc/callback?code=x&state=never-issued"
        async with browser.get(forged, allow_redirects=False) as answer:
            assert "was+not+begun+here" in answer.headers["Location"]
    failed = [e for e in await audit_events(tmp_path) if e["action"] == "login" and e["outcome"] == "failed"]
    assert len(failed) == 3 and all(idp.client_secret not in str(e) for e in failed)


async def test_the_login_page_offers_no_single_sign_on_unless_configured(tmp_path: Path) -> None:
    async with listening(tmp_path, {"listen": "127.0.0.1:0"}) as running, aiohttp.ClientSession() as client:
        async with client.get(running.url + "login") as answer:
            assert "single sign-on" not in await answer.text()
        async with client.get(running.url + "login/oidc", allow_redirects=False) as answer:
            assert answer.status == 401  # no such route: an unknown path needs a credential
