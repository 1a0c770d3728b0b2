"""STIX/TAXII as a threat-exchange source and destination (issue 9).

``taxii`` source (:class:`TaxiiSource`): indicators added to a TAXII 2.1 or 2.0 collection,
incrementally, their STIX patterns read with ``stix2-patterns``. ``taxii`` destination
(:class:`TaxiiSink`): STIX 2.1 indicators posted to a TAXII 2.1 collection, revoked when removed.
Tests run them against the real medallion server (:mod:`ce_taxii.fake`).
"""

from __future__ import annotations

from ce_taxii.sink import TaxiiSink, TaxiiSinkOptions
from ce_taxii.source import TaxiiSource, TaxiiSourceOptions

__all__ = ["TaxiiSink", "TaxiiSinkOptions", "TaxiiSource", "TaxiiSourceOptions"]
