"""The ``elasticsearch`` log sink (also OpenSearch): idempotent ``_bulk`` creates keyed by ``_id``."""

from __future__ import annotations

from ce_elastic.sink import ElasticsearchOptions, ElasticsearchSink

__all__ = ["ElasticsearchOptions", "ElasticsearchSink"]
