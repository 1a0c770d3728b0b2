"""The ``chronicle`` log sink: Google SecOps (Chronicle) ingestion of unstructured log entries."""

from __future__ import annotations

from ce_chronicle.sink import ChronicleOptions, ChronicleSink

__all__ = ["ChronicleOptions", "ChronicleSink"]
