"""A Netskope tenant's records as risk scores, read from the spool: which stream scores which entity type,
by which field, on which scale (CE's Netskope risk plugin: UBA alerts feed users, application events
feed applications, client status events feed devices).

Each record gives one entity's score: its key field (a dotted path reaches inside), its scored field,
its time (``timestamp``) and a few attributes a person reads in ``risk show``. A record without a key
or a value is counted, never stored; every value taken from a record is bounded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ce_daemon.keys import StreamKey
from ce_daemon.netskope.subtypes import DataKind
from ce_daemon.plugin import RiskRecord, RiskScale
from ce_daemon.risk.settings import NetskopeUba

__all__ = ["STREAMS", "StreamReader", "reader_for", "spool_records"]

KEY_LIMIT: Final = 320
"""The longest key taken (an e-mail address is at most 320 characters)."""
ATTRIBUTE_LIMIT: Final = 200


@dataclass(frozen=True, slots=True)
class StreamReader:
    """How one stream's records become scores."""

    kind: DataKind
    subtype: str
    entity: str
    keys: tuple[str, ...]
    """Key fields, the first present wins."""
    field: str
    scale: RiskScale
    attributes: tuple[tuple[str, str], ...] = ()
    """``(name, path)`` of each attribute kept."""

    def stream(self, tenant: str) -> StreamKey:
        return StreamKey(tenant, self.kind, self.subtype)


STREAMS: Final[Mapping[str, StreamReader]] = {
    "uba": StreamReader(
        "alerts", "uba", "user", ("user", "ur_normalized", "userkey"), "score",
        RiskScale(0.0, 1000.0, higher_is_safer=False),
        (("policy", "policy"), ("alert_name", "alert_name"), ("risk_level", "risk_level")),
    ),
    "application": StreamReader(
        "events", "application", "application", ("app",), "cci", RiskScale(0.0, 100.0),
        (("ccl", "ccl"), ("category", "appcategory"), ("instance", "instance_id")),
    ),
    "clientstatus": StreamReader(
        "events", "clientstatus", "device", ("device_id",), "status",
        RiskScale(labels={"Enabled": 875.0, "Upgrade failed": 375.0, "Disabled": 125.0}),
        (("hostname", "host_info.hostname"), ("os", "host_info.os"), ("user", "user"),
         ("classification", "user_info.device_classification_status"), ("client", "client_version")),
    ),
}  # fmt: skip


def reader_for(settings: NetskopeUba) -> StreamReader:
    """The reader of ``settings``' stream, with the fields and direction the YAML names instead."""
    base = STREAMS[settings.stream]
    scale = base.scale
    if settings.higher_is_safer is not None and scale.labels is None:
        scale = RiskScale(scale.low, scale.high, settings.higher_is_safer, None, scale.population)
    return StreamReader(
        base.kind, base.subtype, base.entity,
        (settings.key,) if settings.key else base.keys, settings.field or base.field, scale, base.attributes,
    )  # fmt: skip


def _at(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record.get(path)
    if value is not None or "." not in path:
        return value
    value = record
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and len(value) <= 40:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def spool_records(records: Sequence[Mapping[str, Any]], reader: StreamReader) -> tuple[list[RiskRecord], int]:
    """The scores ``records`` carry as ``reader`` reads them; the number without a key or a value."""
    found: list[RiskRecord] = []
    missing = 0
    labelled = reader.scale.labels is not None
    for record in records:
        key = next((v for f in reader.keys if isinstance(v := _at(record, f), str) and v.strip()), None)
        if key is None or len(key) > KEY_LIMIT or (reader.entity == "user" and "@" not in key):
            missing += 1
            continue
        value = _at(record, reader.field)
        score = None if labelled else _number(value)
        label = str(value)[:ATTRIBUTE_LIMIT] if labelled and isinstance(value, str | int) else None
        if score is None and label is None:
            missing += 1
            continue
        seen = _number(record.get("timestamp"))
        attributes = {
            name: str(v)[:ATTRIBUTE_LIMIT]
            for name, path in reader.attributes
            if (v := _at(record, path)) not in (None, "") and not isinstance(v, dict | list)
        }
        found.append(RiskRecord(reader.entity, key.strip(), score=score, label=label, seen=seen,
                                attributes=attributes))  # fmt: skip
    return found, missing
