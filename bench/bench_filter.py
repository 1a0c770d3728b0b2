"""Filter evaluation speed: predicates per second on one core, over 100k Netskope-like alerts.

Run: ``python bench/bench_filter.py``. Target: at least 1,000,000 simple predicates per second.
Always exits 0: it is a report, not a gate.
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson

from ce_daemon.filter import compile_filter, describe

TARGET_PER_SECOND = 1_000_000
RECORDS = 100_000
ROUNDS = 5

ALERT_TYPES = ["DLP", "Malware", "policy", "anomaly", "Compromised Credential", "Malsite", "uba", "watchlist"]
SEVERITIES = ["low", "medium", "high", "critical"]
APPS = ["Box", "Dropbox", "Google Drive", "Slack", "Microsoft Office 365 OneDrive", "Gmail", "GitHub"]
DEPARTMENTS = ["sales", "engineering", "finance", "hr", "legal"]

FILTERS: list[tuple[str, object]] = [
    ("scalar equality", {"severity": "high"}),
    ("$in of strings", {"alert_type": {"$in": ["DLP", "Malware"]}}),
    ("$ne on a nested path", {"user_info.department": {"$ne": "sales"}}),
    ("range + regex", {"cci": {"$gte": 50, "$lt": 90}, "app": {"$regex": "^(box|drop)", "$options": "i"}}),
    (
        "CE JSON string with $or",
        (
            '{"$or": [{"severity": "critical"}, {"user_info.groups": "admins"},'
            ' {"dlp_profile": {"$exists": true}}]}'
        ),
    ),
]


def make_alert(rng: random.Random, number: int) -> dict[str, Any]:
    """One alert shaped like the data-export API returns it (a subset of the real fields)."""
    alert_type = rng.choice(ALERT_TYPES)
    alert: dict[str, Any] = {
        "_id": f"{number:024x}",
        "timestamp": 1_700_000_000 + number,
        "type": "nspolicy",
        "alert": "yes",
        "alert_type": alert_type,
        "alert_name": f"{alert_type} rule {rng.randint(1, 40)}",
        "severity": rng.choice(SEVERITIES),
        "app": rng.choice(APPS),
        "appcategory": "Cloud Storage",
        "cci": rng.randint(0, 100),
        "ccl": rng.choice(["low", "medium", "high", "excellent"]),
        "user": f"user{rng.randint(1, 5000)}@example.com",
        "srcip": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        "dstip": f"52.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        "activity": rng.choice(["Upload", "Download", "Share", "View"]),
        "action": rng.choice(["block", "alert", "allow"]),
        "access_method": "Client",
        "os": rng.choice(["Windows 11", "macOS 14", "Ubuntu 22.04"]),
        "src_location": rng.choice(["Paris", "London", "Austin", "Pune"]),
        "user_info": {
            "department": rng.choice(DEPARTMENTS),
            "groups": rng.sample(["staff", "admins", "contractors", "vpn", "finance-ro"], k=2),
        },
    }
    if alert_type == "DLP":
        alert |= {"dlp_profile": "PCI", "dlp_rule": "Credit cards", "dlp_file": f"report-{number}.xlsx"}
    if alert_type == "Malware":
        alert |= {"malware_name": "EICAR-Test-File", "malware_type": "Virus", "md5": f"{number:032x}"}
    return alert


def main() -> None:
    rng = random.Random(20240601)
    # Through orjson, as a poller would hand them over: plain dicts of str/int/list.
    records = orjson.loads(orjson.dumps([make_alert(rng, n) for n in range(RECORDS)]))
    print(f"filter evaluation over {len(records):,} alert records, best of {ROUNDS} rounds, one core")
    print(f"target: {TARGET_PER_SECOND:,} predicates/s\n")
    slowest = float("inf")
    for label, spec in FILTERS:
        predicate = compile_filter(spec)
        best = float("inf")
        kept = 0
        for _ in range(ROUNDS):
            started = time.perf_counter()
            kept = len([record for record in records if predicate(record)])
            best = min(best, time.perf_counter() - started)
        rate = len(records) / best
        slowest = min(slowest, rate)
        verdict = "ok" if rate >= TARGET_PER_SECOND else "BELOW TARGET"
        print(f"{label:28} {rate:>13,.0f}/s  {verdict:12} matched {kept:>6,}  {describe(spec)}")
    print(f"\nslowest: {slowest:,.0f}/s = {slowest / TARGET_PER_SECOND:.1f}x the target")


if __name__ == "__main__":
    main()
