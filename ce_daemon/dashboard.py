"""The dashboard: HTML pages served by the daemon's listener under ``/ui``, drawn on the server (tables,
forms, SVG charts), so every view reads with JavaScript off and nothing is built for the front end.

The core draws the overview (components and their health, each log route's counters and lag, the
spool's fill) and the frame (navigation, style); each job contributes its pages through the job
contract (:meth:`ce_daemon.jobs.Job.dashboard_pages`), mounted under ``/ui/<job>``. A page renders
from the same views as the API, with parameters validated the same way; every text from the state is
escaped. Pages are reads (``viewer``); what changes something stays in the API and the CLI.
"""

from __future__ import annotations

import html
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from ce_daemon import redact
from ce_daemon.access.credentials import Principal
from ce_daemon.access.guard import LOGIN_PAGE, PRINCIPAL, SSO_PAGE, is_page, public
from ce_daemon.api import HISTORY, ApiCall, ApiError, ApiHost, Caller, Param, call_for, caller_of, guarded
from ce_daemon.errors import describe

__all__ = ["Page", "bar", "chart", "dashboard_routes", "escape", "link", "table", "when"]

UI: Final = "/ui"
SINGLE_SIGN_ON: Final = web.AppKey("single_sign_on", bool)
"""Whether the listener offers single sign-on (the login page then links to it)."""
STYLE: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#16233a;color:#fff;padding:.6em 1.2em;display:flex;gap:1.4em;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header a.here{color:#fff;font-weight:600}
header form{margin:0 0 0 auto}header .who{margin-left:auto;color:#cfe0ff}header .who+form{margin:0}
main{padding:1em 1.4em;max-width:1400px}h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;background:#fff;margin:.4em 0 1em}th,td{padding:.3em .7em;border-bottom:1px
solid #e3e6eb;text-align:left;vertical-align:top}th a{color:inherit}td.n{text-align:right}
.ok{color:#137333}.degraded,.high{color:#b06000}.failed,.critical{color:#c5221f}.low{color:#137333}
.medium{color:#8a6d00}form{margin:.5em 0}form label{margin-right:.8em}svg{background:#fff}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{background:#fff;padding:.7em 1em;min-width:12em;
border:1px solid #e3e6eb}.card b{font-size:1.4em;display:block}.muted{color:#667}
"""


HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
"""No script runs, nothing loads from elsewhere, no page is framed. The referrer stays on the listener
(``same-origin``, not ``no-referrer``: with that a browser posts the login form with ``Origin: null``,
which the login's origin check refuses)."""


def escape(value: object) -> str:
    """``value`` as HTML text (None: a dash)."""
    return "-" if value is None else html.escape(str(value), quote=True)


def when(epoch: float | None) -> str:
    """An epoch as UTC time, or a dash."""
    return "-" if not epoch else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(epoch)))


def link(href: str, text: object, **query: object) -> str:
    """An ``<a>`` to ``href`` with ``query`` (None values left out)."""
    given = {k: v for k, v in query.items() if v is not None}
    target = href + ("?" + urlencode(given) if given else "")
    return f'<a href="{escape(target)}">{escape(text)}</a>'


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: frozenset[int] = frozenset()
) -> str:
    """A table; ``headers`` and cells are HTML already (escape what comes from the state)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body or ''}</tbody></table>" + (
        "" if body else '<p class="muted">nothing to show</p>'
    )


def bar(value: float, top: float, width: int = 160) -> str:
    """A small horizontal bar (SVG) for ``value`` out of ``top``."""
    filled = 0 if top <= 0 else max(0, min(width, round(width * value / top)))
    return (
        f'<svg width="{width}" height="10" role="img" aria-label="{value:g} of {top:g}">'
        f'<rect width="{width}" height="10" fill="#e3e6eb"/>'
        f'<rect width="{filled}" height="10" fill="#3a6fd8"/></svg>'
    )


def chart(points: Sequence[tuple[str, float]], *, low: float = 0, high: float = 1000, title: str = "") -> str:
    """A line chart (SVG) of ``points`` (label, value) between ``low`` and ``high``, labels below."""
    width, height, pad = 640, 220, 40
    if not points:
        return '<p class="muted">no day snapshotted yet: the chart starts once a day has ended</p>'
    step = (width - 2 * pad) / max(1, len(points) - 1)

    def y(value: float) -> float:
        return height - pad - (height - 2 * pad) * (min(high, max(low, value)) - low) / (high - low)

    line = " ".join(f"{pad + i * step:.1f},{y(v):.1f}" for i, (_, v) in enumerate(points))
    grid = "".join(
        f'<line x1="{pad}" x2="{width - pad}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e3e6eb"/>'
        f'<text x="4" y="{y(v) + 4:.1f}" font-size="10">{v:g}</text>'
        for v in (low, (low + high) / 2, high)
    )
    dots = "".join(
        f'<circle cx="{pad + i * step:.1f}" cy="{y(v):.1f}" r="3" fill="#3a6fd8">'
        f"<title>{escape(label)}: {v:.1f}</title></circle>"
        for i, (label, v) in enumerate(points)
    )
    labels = "".join(
        f'<text x="{pad + i * step:.1f}" y="{height - 12}" font-size="10" text-anchor="middle">'
        f"{escape(label[5:])}</text>"
        for i, (label, _) in enumerate(points)
        if len(points) <= 14 or i % max(1, len(points) // 10) == 0
    )
    return (
        f'<svg class="chart" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'
        f'{grid}<polyline fill="none" stroke="#3a6fd8" stroke-width="2" points="{line}"/>{dots}{labels}</svg>'
    )


Render = Callable[[ApiCall], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Page:
    """One page: its path relative to ``/ui/<job>`` (``""``: the job's first page), its title in the
    navigation (None: not listed there), its parameters and how it renders (an HTML fragment)."""

    path: str
    title: str | None
    render: Render
    params: tuple[Param, ...] = ()


def _per_second(value: float | None) -> str:
    return (
        '<span class="muted" title="shown from the next view on">-</span>'
        if value is None
        else f"{value:.1f}"
    )


def _state(state: str) -> str:
    return f'<span class="{escape(state)}">{escape(state)}</span>'


def _frame(
    title: str, here: str, nav: Sequence[tuple[str, str]], body: str, who: Principal | None = None
) -> str:
    links = "".join(
        f'<a href="{escape(href)}"{" class=here" if href == here else ""}>{escape(name)}</a>'
        for name, href in nav
    )
    if who is not None and who.csrf is not None:
        links += (
            f'<span class="who">{escape(who.name)} ({escape(who.role)})</span>'
            f'<form method="post" action="/logout"><input type="hidden" name="csrf_token"'
            f' value="{escape(who.csrf)}"><button>log out</button></form>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} · ce-daemon</title><style>{STYLE}</style></head>"
        f"<body><header><b>ce-daemon</b>{links}</header><main>{body}</main></body></html>"
    )


@public
async def login_page(request: web.Request) -> web.Response:
    """``GET /login``: the form a person signs in with (posted to ``/login``, then back to ``next``)."""
    back = request.query.get("next", UI + "/")
    if not is_page(back.split("?", 1)[0]) or back.startswith("//"):
        back = UI + "/"
    failed = '<p class="failed">wrong user or password</p>' if request.query.get("failed") else ""
    if request.query.get("sso_error"):
        failed += f'<p class="failed">single sign-on refused: {escape(request.query["sso_error"][:200])}</p>'
    if request.app.get(SINGLE_SIGN_ON):
        sso = SSO_PAGE + "?" + urlencode({"next": back})
        failed += f'<p><a href="{escape(sso)}">log in with single sign-on</a></p>'
    body = (
        f'<h1>Log in</h1>{failed}<form method="post" action="{LOGIN_PAGE}">'
        f'<input type="hidden" name="next" value="{escape(back)}">'
        '<p><label>user <input name="user" autocomplete="username" required></label></p>'
        '<p><label>password <input name="password" type="password" autocomplete="current-password"'
        " required></label></p><p><button>log in</button></p></form>"
    )
    return web.Response(text=_frame("Log in", "", [], body), content_type="text/html", headers=HEADERS)


async def _overview(call: ApiCall) -> str:
    snapshot = await call.host.status_snapshot()
    rates = HISTORY.rates(snapshot)
    components = snapshot.get("components", [])
    cards = (
        f'<div class="cards"><div class="card">phase<b>{escape(snapshot.get("phase"))}</b></div>'
        f'<div class="card">components ok<b>{snapshot.get("components_ok")}/'
        f"{snapshot.get('components_total')}</b>"
        f'</div><div class="card">generation<b>{snapshot.get("generation")}</b></div>'
        f'<div class="card">up<b>{int(snapshot.get("uptime_s", 0)) // 60} min</b></div></div>'
    )
    routes = [c for c in components if c.get("kind") == "route"]
    route_rows = []
    for c in routes:
        counters = c.get("counters", {})
        route_rows.append((
            escape(str(c["name"]).removeprefix("route:")), _state(c["state"]),
            _per_second(rates.get(c["name"], (None, None))[1]), escape(counters.get("sent", 0)),
            escape(counters.get("dead_lettered", 0)), escape(counters.get("lag_s", "-")),
            escape(c.get("detail")),
        ))  # fmt: skip
    spool = snapshot.get("spool") or {}
    fill = ""
    if spool:
        used, limit = float(spool.get("bytes", 0) or 0), float(spool.get("max_bytes", 0) or 0)
        fill = (
            f"<h2>Spool</h2><p>{escape(spool.get('records', 0))} records, {used / 1048576:.1f} MiB"
            + (f" of {limit / 1048576:.0f} MiB {bar(used, limit)}" if limit else "")
            + "</p>"
        )
    rows = [
        (escape(c["name"]), escape(c["kind"]), _state(c["state"]),
         escape(c.get("detail")), when(c.get("since")))
        for c in components
    ]  # fmt: skip
    return (
        f"<h1>Overview</h1>{cards}<h2>Log routes</h2>"
        + table(
            ["route", "state", "sent/s", "sent", "dead-lettered", "lag (s)", "detail"],
            route_rows,
            numeric=frozenset({2, 3, 4, 5}),
        )
        + fill
        + "<h2>Components</h2>"
        + table(["component", "kind", "state", "detail", "since"], rows)
    )


def dashboard_routes(host: ApiHost, caller: Caller = caller_of) -> list[web.RouteDef]:
    """The dashboard's routes: ``/`` (to the overview), ``/ui/`` and every job's pages."""
    pages: list[tuple[str | None, Page]] = [(None, Page("", "Overview", _overview))]
    for info in host.jobs.all():
        if info.job is not None:
            pages.extend((info.name, page) for page in info.job.dashboard_pages())
    nav = [(page.title, _path(job, page)) for job, page in pages if page.title is not None]

    async def root(request: web.Request) -> web.Response:
        raise web.HTTPFound(UI + "/")

    defs = [
        web.get("/", guarded("viewer", root)),
        web.get(UI, guarded("viewer", root)),
        web.get(LOGIN_PAGE, login_page),
    ]
    for job, page in pages:
        defs.append(web.get(_path(job, page), guarded("viewer", _handler(host, job, page, nav, caller))))
    return defs


def _path(job: str | None, page: Page) -> str:
    return f"{UI}/{job + '/' if job else ''}{page.path.lstrip('/')}" if page.path or job else UI + "/"


def _handler(
    host: ApiHost, job: str | None, page: Page, nav: Sequence[tuple[str, str]], caller: Caller
) -> Callable[[web.Request], Awaitable[web.Response]]:
    here = _path(job, page) if page.title else next((h for _, h in nav if h.startswith(f"{UI}/{job}/")), "")

    async def handle(request: web.Request) -> web.Response:
        who = caller(request)
        title = page.title or (job or "").title()
        try:
            body = await page.render(call_for(host, job, page.params, request, who))
            status = 200
        except ApiError as exc:
            body, status = (
                f"<h1>{escape(title)}</h1><p class=failed>{escape(redact.scrub(exc.message))}</p>",
                exc.status,
            )
        except Exception as exc:  # noqa: BLE001 - one failing view must not take the listener down
            body, status = (
                f"<p class=failed>this page failed: {escape(redact.scrub(describe(exc))[:300])}</p>",
                500,
            )
        signed_in = request.get(PRINCIPAL)
        framed = _frame(title, here, nav, body, signed_in if isinstance(signed_in, Principal) else None)
        return web.Response(text=framed, status=status, content_type="text/html", headers=HEADERS)

    return handle


def form(
    action: str, fields: Sequence[tuple[str, str, Sequence[str] | None]], values: Mapping[str, Any]
) -> str:
    """A GET form: each field ``(name, label, choices or None for free text)``, filled with ``values``."""
    parts = []
    for name, label, choices in fields:
        value = values.get(name)
        if choices is None:
            control = f'<input name="{escape(name)}" value="{escape(value or "")}" size="18">'
        else:
            options = "".join(
                f'<option value="{escape(c)}"{" selected" if c == value else ""}>'
                f"{escape(c or 'any')}</option>"
                for c in ("", *choices)
            )
            control = f'<select name="{escape(name)}">{options}</select>'
        parts.append(f"<label>{escape(label)} {control}</label>")
    return f'<form method="get" action="{escape(action)}">{"".join(parts)}<button>show</button></form>'
