"""The risk exchange's dashboard page: the average score per entity type, yesterday against today with the
delta and the trend, a chart of the daily averages over a chosen window, and the entities (filterable by
type, band and source) with their combined and per-source scores."""

from __future__ import annotations

from ce_daemon.api import ApiCall, Param, limit_param
from ce_daemon.dashboard import Page, chart, escape, form, link, table, when
from ce_daemon.risk.api import BANDS, TYPES
from ce_daemon.risk.commands import entities_view, show_view, trend_view
from ce_daemon.risk.store import RiskStore

__all__ = ["risk_pages"]


def _number(value: float | None, sign: bool = False) -> str:
    return "-" if value is None else (f"{value:+.1f}" if sign else f"{value:.1f}")


async def _risk(call: ApiCall) -> str:
    risk = RiskStore(call.store)
    a = call.args
    chosen = a["chart"] or "user"
    data = await trend_view(risk, a["days"])
    rows = []
    for kind, view in data["types"].items():
        days = view["days"]
        rows.append(
            (
                link("/ui/risk/", kind, chart=kind, days=a["days"]),
                escape(view["today"]["entities"]),
                _number(view["today"]["average"]),
                _number(days[-1]["average"] if days else None),
                _number(view["delta"], sign=True),
                "-" if view["trend_per_day"] is None else f"{view['trend_per_day']:+.2f}/day",
            )
        )
    series = data["types"].get(chosen, {}).get("days", [])
    points = [(d["day"], float(d["average"])) for d in series]
    entities = await entities_view(risk, a["type"], a["band"], a["source"], a["limit"])
    listed = [
        (
            escape(e["type"]),
            link(f"/ui/risk/entity/{e['type']}", e["key"], key=e["key"]),
            _number(e["score"]),
            f'<span class="{escape(e["band"])}">{escape(e["band"])}</span>',
            escape(" ".join(f"{s}={v:.0f}" for s, v in e["scores"].items())),
            when(e["updated"]),
        )
        for e in entities
    ]
    window = form("/ui/risk/", [("chart", "type", TYPES), ("days", "days", None)], {**a, "chart": chosen})
    return (
        "<h1>Risk</h1><h2>Average score per entity type (0-1000, higher is safer)</h2>"
        + table(
            ["type", "scored now", "average now", "last day", "delta", "trend"],
            rows,
            numeric=frozenset({1, 2, 3, 4}),
        )
        + f"<h2>Daily average of {escape(chosen)}s, last {a['days']} days</h2>{window}"
        + chart(points, title=f"daily average of {chosen}s")
        + "<h2>Entities</h2>"
        + form("/ui/risk/", [("type", "type", TYPES), ("band", "band", BANDS), ("source", "source", None)], a)
        + table(["type", "key", "score", "band", "per source", "updated"], listed, numeric=frozenset({2}))
    )


async def _entity(call: ApiCall) -> str:
    shown = await show_view(RiskStore(call.store), call.args["kind"], call.args["key"], 200)
    if shown is None:
        return f"<h1>Risk</h1><p>{escape(call.args['kind'])} {escape(call.args['key'])} is not scored.</p>"
    records = [
        (
            escape(r["source"]),
            _number(r["score"]),
            escape(r["raw"] if r["raw"] is not None else r["label"]),
            when(r["seen"]),
        )
        for r in shown["records"]
    ]
    history = [(when(h["at"]), _number(h["score"]), escape(h["band"])) for h in shown["history"]]
    points = [
        (when(h["at"])[:10] + " " + when(h["at"])[11:16], float(h["score"]))
        for h in reversed(shown["history"])
        if h["score"] is not None
    ]
    return (
        f"<h1>{escape(shown['type'])} {escape(shown['key'])}</h1>"
        f"<p>combined score {_number(shown['score'])}, band "
        f'<span class="{escape(shown["band"])}">{escape(shown["band"])}</span></p>'
        + table(["source", "score", "raw", "seen"], records)
        + "<h2>History</h2>"
        + chart(points, title="combined score")
        + table(["at", "score", "band"], history)
        + table(["attribute", "value"], [(escape(k), escape(v)) for k, v in shown["attributes"].items()])
    )


def risk_pages() -> list[Page]:
    """The risk job's pages."""
    return [
        Page(
            "",
            "Risk",
            _risk,
            (
                Param("chart", "entity type charted", choices=TYPES),
                Param("days", "window", "integer", default=30, minimum=1, maximum=400),
                Param("type", "entity type", choices=TYPES),
                Param("band", "band", choices=BANDS),
                Param("source", "source"),
                limit_param(200),
            ),
        ),
        Page(
            "entity/{kind}",
            None,
            _entity,
            (
                Param("kind", "entity type", where="path", required=True, choices=TYPES),
                Param("key", "the entity's key", required=True),
            ),
        ),
    ]
