"""The ``misp`` threat source: attributes changed since the checkpoint, page by page.

Each poll asks ``POST /attributes/restSearch`` for the attributes whose ``attribute_timestamp``
lies in ``[checkpoint, now]`` (the first poll: ``[now - initial_lookback, now]``), in timestamp
order so that the largest timestamp read so far is a safe place to resume from: every page's
checkpoint is that timestamp. MISP's bound is inclusive, so a resumed poll reads the boundary
second again (the store takes a sighting twice without harm). ``includeContext`` brings each
attribute's event (its ``threat_level_id`` and tags).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from pydantic import Field, field_validator

from ce_daemon.plugin import (
    Duration,
    Health,
    IocPage,
    IocRecord,
    PluginContext,
    Pull,
    ThreatSource,
    TransientError,
)
from ce_misp.client import MispClient, MispOptions, shape_error
from ce_misp.mapping import SUPPORTED_TYPES, read_attribute

_SEARCH = "/attributes/restSearch"


class MispSourceOptions(MispOptions):
    """Options of the ``misp`` threat source (see the package's docstring)."""

    page_size: Annotated[int, Field(ge=1, le=10_000)] = 1000
    initial_lookback: Annotated[Duration, Field(gt=0)] = 7 * 86_400.0
    tags: list[Annotated[str, Field(min_length=1)]] = []
    exclude_tags: list[Annotated[str, Field(min_length=1)]] = []
    to_ids_only: bool = True
    types: list[str] | None = None
    max_pages: Annotated[int, Field(ge=1)] = 1000

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: list[str] | None) -> list[str] | None:
        unknown = sorted(set(value or ()) - SUPPORTED_TYPES)
        if unknown:
            known = ", ".join(sorted(SUPPORTED_TYPES))
            raise ValueError(f"MISP types {', '.join(unknown)} give no indicator; use some of {known}")
        return value


class MispSource(ThreatSource[MispSourceOptions]):
    """Pulls IOCs from MISP's attributes, incrementally (``attribute_timestamp`` as the checkpoint)."""

    api_version = 1
    full_list = False

    def __init__(self, options: MispSourceOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.client = MispClient(options, context)

    async def open(self) -> None:
        self.client.session()

    async def health(self) -> Health:
        return await self.client.health()

    async def close(self) -> None:
        await self.client.close()

    async def pull(self, request: Pull) -> AsyncIterator[IocPage]:
        opts = self.options
        start = self._start(request)
        end = max(int(request.now), start)
        excluded = frozenset(opts.exclude_tags) | request.exclude_tags
        filters: dict[str, Any] = {
            "returnFormat": "json",
            "attribute_timestamp": [str(start), str(end)],
            "order": "Attribute.timestamp asc, Attribute.id asc",
            "includeContext": 1,
            "limit": opts.page_size,
        }
        tags = [*opts.tags, *(f"!{tag}" for tag in sorted(excluded))]
        if tags:
            filters["tags"] = tags
        if opts.to_ids_only:
            filters["to_ids"] = 1
        if opts.types:
            filters["type"] = opts.types
        latest: int | None = None
        for page in range(1, opts.max_pages + 1):
            answer = await self.client.call("POST", _SEARCH, {**filters, "page": page})
            items = _attributes(answer.body)
            if len(items) > opts.page_size:
                raise TransientError(
                    f"MISP POST {_SEARCH} answered {len(items)} attributes for a page of {opts.page_size}"
                )
            records: list[IocRecord] = []
            refused: list[tuple[str, str]] = []
            for item in items:
                reading = read_attribute(item, excluded)
                if reading.record is not None:
                    records.append(reading.record)
                if reading.refused is not None:
                    refused.append(reading.refused)
                if reading.timestamp is not None:
                    # never past the window's end: a wrong timestamp must not skip what comes later
                    latest = max(latest or start, min(reading.timestamp, end))
            yield IocPage(records, refused, checkpoint=None if latest is None else str(latest))
            if len(items) < opts.page_size:
                return
        self.context.log.warning("misp.max_pages_reached", pages=opts.max_pages, checkpoint=latest)

    def _start(self, request: Pull) -> int:
        """Where this poll starts: the checkpoint, or ``initial_lookback`` before now."""
        checkpoint = request.checkpoint
        if checkpoint is not None and checkpoint.isascii() and checkpoint.isdigit():
            return int(checkpoint)
        if checkpoint is not None:
            self.context.log.warning("misp.checkpoint_unreadable", checkpoint=checkpoint[:40])
        return max(0, int(request.now - self.options.initial_lookback))


def _attributes(body: Any) -> list[Any]:
    """The attributes of a restSearch answer (``{"response": {"Attribute": [...]}}``)."""
    response = body.get("response") if isinstance(body, dict) else None
    if response == []:  # what MISP answers when nothing matched
        return []
    attributes = response.get("Attribute") if isinstance(response, dict) else None
    if not isinstance(attributes, list):
        raise shape_error(f"MISP POST {_SEARCH}", 'no {"response": {"Attribute": [...]}}', body)
    return attributes
