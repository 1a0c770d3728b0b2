"""The threat exchange's dashboard pages: IOCs by type and source, each destination's share status and
what caps dropped, a search by value, type, source and status, and one value with every sighting and
where it is shared."""

from __future__ import annotations

from collections import defaultdict

from ce_daemon.api import ApiCall, ApiError, Param, limit_param
from ce_daemon.dashboard import Page, escape, form, link, table, when
from ce_daemon.threats.commands import merged_dict, show_view, stats_view
from ce_daemon.threats.model import IocType
from ce_daemon.threats.store import IocStore

__all__ = ["threat_pages"]


async def _threats(call: ApiCall) -> str:
    iocs = IocStore(call.store)
    a = call.args
    stats = await stats_view(iocs)
    by_type: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    sources = sorted({c["source"] for c in stats["counts"]})
    for c in stats["counts"]:
        if c["active"]:
            by_type[c["type"]][c["source"]] += c["rows"]
    counts = [
        (escape(kind), *(escape(per.get(s, 0)) for s in sources)) for kind, per in sorted(by_type.items())
    ]
    pushes = [
        (
            escape(p["destination"]),
            escape(p["listed"]),
            when(p["last_ok"]),
            f"+{p['added']} -{p['removed']}",
            escape(p["dropped"]),
            escape(p["rejected"]),
            escape(p["error"] or ""),
        )
        for p in stats["destinations"]
    ]
    polls = [
        (
            escape(s["source"]),
            escape(s["polls"]),
            when(s["last_poll"]),
            escape(s["rejected"]),
            escape(s["last_error"] or ""),
        )
        for s in stats["sources"]
    ]
    active = None if a["status"] is None else a["status"] == "active"
    found = await iocs.search(
        contains=a["value"],
        kind=None if a["type"] is None else IocType(a["type"]),
        source=a["source"],
        active=active,
        limit=a["limit"],
    )
    listed = []
    for m in map(merged_dict, found):
        seen_by = ", ".join(f"{s['source']} x{s['sightings']}" for s in m["sources"])
        listed.append(
            (
                link(f"/ui/threats/ioc/{m['type']}", m["value"], value=m["value"]),
                escape(m["type"]),
                "active" if m["active"] else "inactive",
                escape(m["sightings"]),
                escape(seen_by),
                when(m["last_seen"]),
            )
        )
    search = form(
        "/ui/threats/",
        [
            ("value", "value contains", None),
            ("type", "type", tuple(IocType)),
            ("source", "source", None),
            ("status", "status", ("active", "inactive")),
        ],
        a,
    )
    return (
        "<h1>Threats</h1><h2>Active IOCs by type and source</h2>"
        + table(["type", *map(escape, sources)], counts, numeric=frozenset(range(1, len(sources) + 1)))
        + "<h2>Sharing</h2>"
        + table(
            ["destination", "listed", "last push", "last change", "dropped by caps", "refused", "error"],
            pushes,
            numeric=frozenset({1, 4, 5}),
        )
        + "<h2>Sources</h2>"
        + table(["source", "polls", "last poll", "refused", "error"], polls)
        + "<h2>IOCs</h2>"
        + search
        + table(
            ["value", "type", "status", "sightings", "seen by", "last seen"], listed, numeric=frozenset({3})
        )
    )


async def _ioc(call: ApiCall) -> str:
    found = [
        m for m in await show_view(IocStore(call.store), call.args["value"]) if m["type"] == call.args["kind"]
    ]
    if not found:
        raise ApiError(404, f"{call.args['value']!r} is not stored as {call.args['kind']}")
    m = found[0]
    rows = [
        (
            escape(s["source"]),
            escape(s["verdict"]),
            escape(s["severity"]),
            escape(s["sightings"]),
            when(s["first_seen"]),
            when(s["last_seen"]),
            "active" if s["active"] else "inactive",
            escape(", ".join(s["tags"])),
        )
        for s in m["sources"]
    ]
    shared = [
        (escape(x["destination"]), escape(x["rule"]), escape(x["state"]), escape(x["reason"] or ""))
        for x in m["shared"]
    ]
    return (
        f"<h1>{escape(m['value'])}</h1><p>{escape(m['type'])}, {'active' if m['active'] else 'inactive'},"
        f" {escape(m['sightings'])} sighting(s)</p>"
        + table(
            ["source", "verdict", "severity", "sightings", "first seen", "last seen", "status", "tags"], rows
        )
        + "<h2>Shared with</h2>"
        + table(["destination", "rule", "state", "reason"], shared)
    )


def threat_pages() -> list[Page]:
    """The threats job's pages."""
    return [
        Page(
            "",
            "Threats",
            _threats,
            (
                Param("value", "substring"),
                Param("type", "IOC type", choices=tuple(IocType)),
                Param("source", "source"),
                Param("status", "status", choices=("active", "inactive")),
                limit_param(100),
            ),
        ),
        Page(
            "ioc/{kind}",
            None,
            _ioc,
            (
                Param("kind", "IOC type", where="path", required=True, choices=tuple(IocType)),
                Param("value", "the value", required=True),
            ),
        ),
    ]
