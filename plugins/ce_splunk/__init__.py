"""The ``splunk_hec`` log sink: batched, gzipped event envelopes to Splunk's HTTP Event Collector."""

from __future__ import annotations

from ce_splunk.sink import SplunkHecOptions, SplunkHecSink

__all__ = ["SplunkHecOptions", "SplunkHecSink"]
