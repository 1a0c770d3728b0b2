"""Deterministic, realistic Netskope alert and event records for the tenant simulator.

A record is a pure function of ``(seed, kind, subtype, seq)`` (and the timestamp its stream gives
it), so a test can recompute every record, or just its ``_id`` with `record_id`, without the
simulator keeping anything. Generation has to keep up with 40,000+ records/s: value pools are built
once per factory from a seeded RNG (`ce_daemon.simulator.record_shapes`), and each record only
merges a few pre-built partial dicts picked by bits of its own ``_id`` hash, instead of drawing
random numbers field by field.
"""

from __future__ import annotations

import hashlib
import random

from ce_daemon.netskope.subtypes import ALERT_SUBTYPES, SUBTYPES, DataKind
from ce_daemon.simulator.record_shapes import (
    POOL_SIZE,
    Record,
    Variant,
    alert_variant,
    app_pool,
    event_variant,
    user_pool,
)

__all__ = ["Record", "RecordFactory", "record_id"]

_ID_BYTES = 12  # 24 hex characters, like Netskope's own `_id`
_MASK63 = (1 << 63) - 1  # 64-bit ids Netskope sends, kept positive and as strings (CE does the same)
_VARIANT_BITS_SHIFT = 12


def _id_prefix(seed: int, kind: str, subtype: str) -> bytes:
    return f"{seed}\x1f{kind}\x1f{subtype}\x1f".encode()


def record_id(seed: int, kind: DataKind, subtype: str, seq: int) -> str:
    """The ``_id`` of record ``seq`` of a stream: 24 hex characters of a BLAKE2b digest."""
    digest = hashlib.blake2b(_id_prefix(seed, kind, subtype) + b"%d" % seq, digest_size=_ID_BYTES)
    return digest.hexdigest()


class _Stream:
    """Everything needed to build the records of one (kind, subtype) quickly."""

    __slots__ = ("_apps", "_prefix", "_users", "_variants")

    def __init__(self, prefix: bytes, users: list[Record], apps: list[Record], variants: list[Variant]):
        self._prefix = hashlib.blake2b(prefix, digest_size=_ID_BYTES)
        self._users = users
        self._apps = apps
        self._variants = variants

    def make(self, seq: int, timestamp: int) -> Record:
        hasher = self._prefix.copy()
        hasher.update(b"%d" % seq)
        digest = hasher.digest()
        bits = int.from_bytes(digest, "big")
        variant = self._variants[(bits >> _VARIANT_BITS_SHIFT) % len(self._variants)]
        record = {
            "_id": digest.hex(),
            "timestamp": timestamp,
            **self._users[bits % POOL_SIZE],
            **self._apps[(bits >> 6) % len(self._apps)],
            **variant.fields,
        }
        for name, shift in variant.id_fields:
            record[name] = str(bits >> shift & _MASK63)
        if variant.finish is not None:
            variant.finish(record, bits, timestamp)
        return record


class RecordFactory:
    """Builds the records of every data-export stream of one simulated tenant.

    ``make`` is deterministic in ``(seed, kind, subtype, seq, timestamp)``. Records share the
    immutable values of the factory's pools; nested dicts are fresh per record.
    """

    def __init__(self, seed: int, tenant: str = "demo") -> None:
        self.seed = seed
        self.tenant = tenant
        users = user_pool(random.Random(f"{seed}:users"), tenant)
        apps = app_pool(random.Random(f"{seed}:apps"))
        alert_variants: dict[str, list[Variant]] = {}
        for subtype in ALERT_SUBTYPES:
            rng = random.Random(f"{seed}:alerts:{subtype}")
            alert_variants[subtype] = [alert_variant(rng, subtype) for _ in range(POOL_SIZE)]
        self._streams: dict[tuple[str, str], _Stream] = {}
        for kind, subtypes in SUBTYPES.items():
            for subtype in subtypes:
                if kind == "alerts":
                    variants = alert_variants[subtype]
                elif subtype == "alert":
                    # events/alert carries every alert type at once, as the real endpoint does.
                    variants = [v for subtype_variants in alert_variants.values() for v in subtype_variants]
                else:
                    rng = random.Random(f"{seed}:events:{subtype}")
                    variants = [event_variant(rng, subtype, tenant) for _ in range(POOL_SIZE)]
                prefix = _id_prefix(seed, kind, subtype)
                self._streams[(kind, subtype)] = _Stream(prefix, users, apps, variants)

    def make(self, kind: DataKind, subtype: str, seq: int, timestamp: int) -> Record:
        """Record ``seq`` of stream ``kind/subtype``, stamped ``timestamp`` (epoch seconds)."""
        return self._streams[(kind, subtype)].make(seq, timestamp)

    def make_many(self, kind: DataKind, subtype: str, seqs: range, timestamps: list[int]) -> list[Record]:
        """Records ``seqs`` of one stream, ``timestamps[i]`` for ``seqs[i]``; the fast path for pages."""
        make = self._streams[(kind, subtype)].make
        return [make(seq, ts) for seq, ts in zip(seqs, timestamps, strict=True)]
