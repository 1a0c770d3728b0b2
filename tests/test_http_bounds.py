"""What every HTTP sink shares: no redirect is followed with credentials, no answer is read beyond a bound."""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Iterable
from pathlib import Path

import pytest
from aiohttp import web

from ce_daemon.errors import ComponentConfigError, TransientError
from ce_daemon.http import HttpOptions, make_session, raise_for_status, read_body
from ce_daemon.testing.fakes.base import FakeHttpServer

SECRET = "sink-secret-0123456789"  # a throwaway value the other host must never see


class Elsewhere(FakeHttpServer):
    """Another origin: records every request (and its headers) it gets."""

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.route("*", "/{path:.*}", self._any)]

    async def _any(self, request: web.Request) -> web.Response:
        await self.record(request, await request.read(), 200)
        return web.Response(text="ok")


class Hostile(FakeHttpServer):
    """A sink that redirects to ``target`` on /moved, and streams a 500 of ``error_bytes`` on /fail."""

    def __init__(self, target: str = "", error_bytes: int = 0) -> None:
        super().__init__()
        self.target = target
        self.error_bytes = error_bytes

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.post("/moved", self._moved), web.post("/fail", self._fail), web.get("/big", self._fail)]

    async def _moved(self, request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": f"{self.target}/collect"})

    async def _fail(self, request: web.Request) -> web.StreamResponse:
        status = 500 if request.method == "POST" else 200
        response = web.StreamResponse(status=status)
        response.content_length = self.error_bytes
        await response.prepare(request)
        chunk = b"x" * (1 << 20)
        try:
            for start in range(0, self.error_bytes, len(chunk)):
                await response.write(chunk[: min(len(chunk), self.error_bytes - start)])
        except ConnectionError:
            pass  # the client read what it needed and hung up, as it should
        return response


def options(url: str) -> HttpOptions:
    """A sink's options with a credential header of its own."""
    return HttpOptions(url=url, headers={"X-Api-Key": SECRET}, timeout=30)


async def test_a_session_follows_no_redirect_so_credentials_never_reach_another_origin(
    tmp_path: Path,
) -> None:
    """A 307 to another host: a ComponentConfigError naming the Location; that host received nothing."""
    elsewhere = Elsewhere()
    async with elsewhere as other:
        hostile = Hostile(target=other)
        async with (
            hostile as url,
            make_session(options(url), tmp_path, Authorization=f"Bearer {SECRET}") as session,
        ):
            with pytest.raises(ComponentConfigError, match=f"HTTP 307, a redirect to {other}/collect"):
                async with session.post(f"{url}/moved", data=b"records"):
                    pass  # never reached: the redirect is refused before it is followed
    assert elsewhere.requests == []


async def test_a_redirect_answer_is_a_configuration_error_naming_its_location(tmp_path: Path) -> None:
    """Asked without following, a 3xx is classified as a configuration error, not a refusal of the records."""
    async with (
        Hostile(target="https://elsewhere.example") as url,
        make_session(options(url), tmp_path) as session,
    ):
        async with session.post(f"{url}/moved", data=b"records", allow_redirects=False) as response:
            with pytest.raises(
                ComponentConfigError, match=re.escape("a redirect to https://elsewhere.example/collect")
            ):
                await raise_for_status(response, "the sink")


async def test_an_error_answer_is_read_only_as_far_as_its_excerpt(tmp_path: Path) -> None:
    """A 500 with 512 MiB of body: the error quotes its start, marked as cut; the body is never read whole."""
    async with Hostile(error_bytes=512 * 1024**2) as url, make_session(options(url), tmp_path) as session:
        async with session.post(f"{url}/fail", data=b"records") as response:
            tracemalloc.start()
            try:
                cut = r"the sink answered HTTP 500: x{200,300}…$"
                with pytest.raises(TransientError, match=cut) as failed:
                    await raise_for_status(response, "the sink")
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert len(str(failed.value)) < 400
    assert peak < 4 * 1024**2


async def test_a_body_beyond_its_bound_is_refused_not_read(tmp_path: Path) -> None:
    """An answer a sink must parse whole, larger than the bound: a TransientError naming the bound."""
    async with Hostile(error_bytes=2 * 1024**2) as url, make_session(options(url), tmp_path) as session:
        async with session.get(f"{url}/big") as response:
            with pytest.raises(TransientError, match="the sink answered a body of more than 1,048,576 bytes"):
                await read_body(response, "the sink", limit=1024**2)
        async with session.get(f"{url}/big") as response:
            assert len(await read_body(response, "the sink", limit=4 * 1024**2)) == 2 * 1024**2
