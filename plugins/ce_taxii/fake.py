"""TAXII servers for the tests: the real medallion (TAXII 2.1) in a subprocess, and a TAXII 2.0 fake.

:class:`Medallion` runs OASIS's reference TAXII 2.1 server, ``medallion`` 3.0.0 (from the ``test``
extra), as ``python -m medallion.scripts.run --host 127.0.0.1 --port N config.json`` with its memory
backend. What medallion 3.0.0 reads (``medallion/__init__.py``, ``backends/memory_backend.py``):

- the config: ``{"backend": {"module": "medallion.backends.memory_backend", "module_class":
  "MemoryBackend", "filename": <data file>}, "users": {name: password}, "taxii": {"max_page_size": N}}``
  (both ``module`` and ``module_class`` are required; every endpoint wants HTTP basic auth);
- the data file: ``"/discovery"`` holds the discovery document (its ``api_roots`` are full URLs,
  so the port is known before the server starts), and each other key is an API root:
  ``{"information": {...max_content_length}, "status": [], "collections": [{id, title, can_read,
  can_write, media_types, objects, manifest}]}``. An object is only served with a manifest entry
  (``id``, ``version`` = its ``modified``, ``date_added``), so seeded objects get one here.

The server is listening when werkzeug says ``Running on`` (read from its output, no polling), and
ready once it answered one discovery request; its output is drained until it exits. State lives
in memory: each :class:`Medallion` is a fresh server.

medallion 3 speaks TAXII 2.1 only; :class:`FakeTaxii20` follows TAXII 2.0 (``taxii-v2.0-cs01``
§3.4 ``Range``/``Content-Range`` paging, STIX bundles, ``application/vnd.oasis.*`` media types).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import sys
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

USERNAME = "admin"
PASSWORD = "Password0-taxii"  # noqa: S105  (a test server's user)
API_ROOT = "api1"
READ_WRITE = "91a7b528-80eb-42ed-a74d-c6fbd5a26116"
READ_ONLY = "52892447-4d7e-4f70-b94d-d7f22742ff63"
TAXII21 = "application/taxii+json;version=2.1"
STIX21 = "application/stix+json;version=2.1"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0


def free_port() -> int:
    """A loopback port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def seeded(objects: Iterable[tuple[Mapping[str, Any], str]]) -> dict[str, list[dict[str, Any]]]:
    """A collection's ``objects`` and ``manifest`` from ``(object, date_added)`` pairs."""
    stored: list[dict[str, Any]] = []
    manifest: list[dict[str, Any]] = []
    for item, date_added in objects:
        stored.append(dict(item))
        version = item.get("modified") or item.get("created")
        manifest.append(
            {"id": item["id"], "date_added": date_added, "version": version, "media_type": STIX21}
        )
    return {"objects": stored, "manifest": manifest}


class Medallion:
    """A real medallion 3.0.0 TAXII 2.1 server on 127.0.0.1, in a subprocess (``async with``).

    One API root (``api1``) with a readable and writable collection (:data:`READ_WRITE`, title
    ``indicators``) and a read-only one (:data:`READ_ONLY`, title ``read-only``), either seeded with
    ``(object, date_added)`` pairs.
    """

    def __init__(
        self,
        directory: Path,
        *,
        seed: Mapping[str, Sequence[tuple[Mapping[str, Any], str]]] | None = None,
        max_page_size: int = 100,
        max_content_length: int = 1_000_000,
    ) -> None:
        self.directory = directory
        self.seed = dict(seed or {})
        self.max_page_size = max_page_size
        self.max_content_length = max_content_length
        self.output: deque[str] = deque(maxlen=200)
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` once started."""
        if self._port is None:
            raise RuntimeError("medallion is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/taxii2/"

    @property
    def api_root_url(self) -> str:
        return f"{self.url}/{API_ROOT}/"

    def objects_url(self, collection: str = READ_WRITE) -> str:
        return f"{self.api_root_url}collections/{collection}/objects/"

    def _write_files(self, port: int) -> Path:
        root = f"http://127.0.0.1:{port}/{API_ROOT}/"
        collections = []
        for collection_id, title, writable in (
            (READ_WRITE, "indicators", True),
            (READ_ONLY, "read-only", False),
        ):
            collection = {
                "id": collection_id,
                "title": title,
                "can_read": True,
                "can_write": writable,
                "media_types": [STIX21],
                **seeded(self.seed.get(collection_id, ())),
            }
            collections.append(collection)
        data = {
            "/discovery": {"title": "ce-daemon test TAXII server", "default": root, "api_roots": [root]},
            API_ROOT: {
                "information": {
                    "title": "test API root",
                    "versions": [TAXII21],
                    "max_content_length": self.max_content_length,
                },
                "status": [],
                "collections": collections,
            },
        }
        data_file = self.directory / f"medallion-data-{port}.json"
        data_file.write_bytes(orjson.dumps(data))
        config = {
            "backend": {
                "module": "medallion.backends.memory_backend",
                "module_class": "MemoryBackend",
                "filename": str(data_file),
            },
            "users": {USERNAME: PASSWORD},
            "taxii": {"max_page_size": self.max_page_size},
        }
        config_file = self.directory / f"medallion-config-{port}.json"
        config_file.write_bytes(orjson.dumps(config))
        return config_file

    async def start(self) -> str:
        """Start the server on a free port (another one if that was taken meanwhile); the discovery URL."""
        for _ in range(3):
            port = free_port()
            config = self._write_files(port)
            command = ["-m", "medallion.scripts.run", "--host", "127.0.0.1", "--port", str(port), str(config)]
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            if await self._ready(process):
                self._process, self._port = process, port
                self._drain = asyncio.create_task(self._drain_output(process))
                await self._answers()
                return self.discovery_url
            await self._end(process)
            if not any("Address already in use" in line for line in self.output):
                break
        raise RuntimeError("medallion did not start:\n" + "\n".join(self.output))

    async def _ready(self, process: asyncio.subprocess.Process) -> bool:
        assert process.stdout is not None
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                while line := await process.stdout.readline():
                    self.output.append(line.decode(errors="replace").rstrip())
                    if b"Running on" in line:
                        return True
        except TimeoutError:
            self.output.append(f"(medallion did not say `Running on` within {_START_TIMEOUT:.0f} s)")
        return False

    async def _answers(self) -> None:
        """One authenticated discovery request: the server is up and its configuration was read."""
        async with (
            aiohttp.ClientSession(headers=self._headers()) as session,
            session.get(self.discovery_url) as response,
        ):
            body = await response.read()
        if response.status != 200:
            await self.stop()
            raise RuntimeError(
                f"medallion answered its discovery with HTTP {response.status}: {body[:300]!r}"
            )

    async def _drain_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            self.output.append(line.decode(errors="replace").rstrip())

    async def _end(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(_STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if process.stdout is not None and self._drain is None:
            with contextlib.suppress(Exception):
                self.output.extend(
                    line.decode(errors="replace").rstrip()
                    for line in (await process.stdout.read()).splitlines()
                )

    async def stop(self) -> None:
        """Stop the server (its state is gone with it)."""
        if self._process is not None:
            process, self._process = self._process, None
            await self._end(process)
        if self._drain is not None:
            drain, self._drain = self._drain, None
            await drain

    async def __aenter__(self) -> Medallion:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what tests do with it -------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        credentials = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        return {"Authorization": f"Basic {credentials}", "Accept": TAXII21}

    async def post(
        self, objects: Sequence[Mapping[str, Any]], collection: str = READ_WRITE
    ) -> dict[str, Any]:
        """POST an envelope of ``objects`` as a TAXII client would; the status resource."""
        headers = {"Content-Type": TAXII21}
        async with (
            aiohttp.ClientSession(headers=self._headers()) as session,
            session.post(
                self.objects_url(collection), data=orjson.dumps({"objects": list(objects)}), headers=headers
            ) as response,
        ):
            body = await response.read()
            assert response.status == 202, body
            status: dict[str, Any] = orjson.loads(body)
            return status

    async def versions(self, collection: str = READ_WRITE) -> list[dict[str, Any]]:
        """Every version of every object the collection holds (``match[version]=all``), by date added."""
        found: list[dict[str, Any]] = []
        params = {"match[version]": "all", "limit": str(self.max_page_size)}
        async with aiohttp.ClientSession(headers=self._headers()) as session:
            token: str | None = None
            while True:
                query = {**params, "next": token} if token else params
                async with session.get(self.objects_url(collection), params=query) as response:
                    assert response.status == 200, await response.text()
                    envelope = orjson.loads(await response.read())
                found.extend(envelope.get("objects", []))
                token = envelope.get("next")
                if not envelope.get("more") or not token:
                    return found


# -- TAXII 2.0 ----------------------------------------------------------------------------------------

TAXII20 = "application/vnd.oasis.taxii+json"
STIX20 = "application/vnd.oasis.stix+json"
_RANGE = re.compile(r"^\s*items\s+(\d+)-(\d+)\s*$")


class FakeTaxii20(FakeHttpServer):
    """A TAXII 2.0 server: discovery ``/taxii/``, API root ``/api1/``, one collection, Range paging.

    ``objects`` are ``(object, date_added)`` pairs; ``max_range`` is the most items the server
    sends per request whatever the ``Range`` asks (servers may send fewer, §3.4.2).
    """

    collection_id = "d2d4b3c9-9d52-4a74-b8a7-6a4b1a3f0e20"

    def __init__(
        self,
        objects: Sequence[tuple[Mapping[str, Any], str]] = (),
        *,
        max_range: int | None = None,
    ) -> None:
        super().__init__()
        self.objects = list(objects)
        self.max_range = max_range
        self._authorization = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.get("/taxii/", self.discovery),
            web.get("/api1/", self.api_root),
            web.get("/api1/collections/", self.collections),
            web.get("/api1/collections/{id}/objects/", self.get_objects),
        ]

    def refuse_credentials(self) -> None:
        self._authorization = "refused"

    def _check(self, request: web.Request, media: str) -> web.Response | None:
        if request.headers.get("Authorization") != self._authorization:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="taxii"'})
        accept = request.headers.get("Accept", "").replace(" ", "")
        if not accept.startswith(media) or "version=2.0" not in accept:
            return json_response({"title": "Not Acceptable", "http_status": "406"}, 406)
        return None

    async def discovery(self, request: web.Request) -> web.Response:
        refused = self._check(request, TAXII20)
        root = f"{self.url}/api1/"
        return refused or json_response({"title": "TAXII 2.0 fake", "default": root, "api_roots": [root]})

    async def api_root(self, request: web.Request) -> web.Response:
        refused = self._check(request, TAXII20)
        info = {"title": "api1", "versions": ["taxii-2.0"], "max_content_length": 1_000_000}
        return refused or json_response(info)

    async def collections(self, request: web.Request) -> web.Response:
        refused = self._check(request, TAXII20)
        entry = {
            "id": self.collection_id,
            "title": "indicators 2.0",
            "can_read": True,
            "can_write": False,
            "media_types": [f"{STIX20}; version=2.0"],
        }
        return refused or json_response({"collections": [entry]})

    async def get_objects(self, request: web.Request) -> web.Response:
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        refused = self._check(request, STIX20)
        if refused is not None:
            await self.record(request, b"", refused.status)
            return refused
        if request.match_info["id"] != self.collection_id:
            return json_response({"title": "Not Found", "http_status": "404"}, 404)
        after = request.query.get("added_after")
        types = set(request.query.get("match[type]", "").split(",")) - {""}
        chosen = sorted(
            (
                (added, item)
                for item, added in self.objects
                if (after is None or added > after) and (not types or item.get("type") in types)
            ),
            key=lambda pair: pair[0],
        )
        total, status, headers = len(chosen), 200, {}
        wanted = _RANGE.match(request.headers.get("Range", ""))
        if wanted is not None:
            first, last = int(wanted.group(1)), int(wanted.group(2))
            if self.max_range is not None:
                last = min(last, first + self.max_range - 1)
            if first >= total:
                await self.record(request, b"", 416)
                return web.Response(status=416, headers={"Content-Range": f"items */{total}"})
            last = min(last, total - 1)
            chosen, status = chosen[first : last + 1], 206
            headers["Content-Range"] = f"items {first}-{last}/{total}"
        if chosen:
            headers["X-TAXII-Date-Added-First"] = chosen[0][0]
            headers["X-TAXII-Date-Added-Last"] = chosen[-1][0]
        bundle = {
            "type": "bundle",
            "id": f"bundle--{uuid.uuid4()}",
            "spec_version": "2.0",
            "objects": [item for _, item in chosen],
        }
        await self.record(request, b"", status)
        response = json_response(bundle, status, headers)
        response.content_type = STIX20
        return response
