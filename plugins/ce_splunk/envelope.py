"""HEC event envelopes, built by splicing bytes: the record is never parsed again.

``{"time": ts, "host", "source", "sourcetype", "index", "fields", "event": …}``: the metadata part
is encoded once per record kind, a JSON record is spliced in as the ``event`` object itself, and a
CEF or LEEF line becomes the ``event`` string.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from ce_daemon.plugin import OutRecord

SOURCETYPE_BY_KIND = {"alerts": "netskope:alert", "events": "netskope:event"}
"""The default sourcetype of each Netskope record kind, when no fixed ``sourcetype`` is set."""


class EnvelopeWriter:
    """Turns :class:`OutRecord` into one HEC envelope (bytes, no separator)."""

    def __init__(
        self,
        *,
        index: str | None,
        sourcetype: str | None,
        source: str | None,
        host: str | None,
        fields: Mapping[str, str],
    ) -> None:
        self._index = index
        self._sourcetype = sourcetype
        self._source = source
        self._host = host
        self._fields = dict(fields)
        self._metadata: dict[str, bytes] = {}

    def _metadata_for(self, kind: str) -> bytes:
        """The envelope's metadata members for ``kind``, each followed by a comma."""
        cached = self._metadata.get(kind)
        if cached is None:
            members = {
                "host": self._host,
                "source": self._source,
                "sourcetype": self._sourcetype or SOURCETYPE_BY_KIND.get(kind, f"netskope:{kind}"),
                "index": self._index,
                "fields": self._fields or None,
            }
            encoded = orjson.dumps({k: v for k, v in members.items() if v is not None})
            cached = encoded[1:-1] + b"," if len(encoded) > 2 else b""
            self._metadata[kind] = cached
        return cached

    def envelope(self, record: OutRecord) -> bytes:
        """The envelope of ``record``; ``time`` is left out when the record has no timestamp."""
        head = b'{"time":%d,' % record.timestamp if record.timestamp > 0 else b"{"
        if record.format == "json":
            event = record.data
        else:
            event = orjson.dumps(record.data.decode("utf-8", "replace"))
        return head + self._metadata_for(record.kind) + b'"event":' + event + b"}"
