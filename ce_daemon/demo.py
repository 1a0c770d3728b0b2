"""``ce-daemon demo``: the built-in demo pipeline against the embedded tenant simulator.

It writes ``DIR/pipeline.yaml`` and runs it exactly as ``ce-daemon run -c`` would (same signals,
reload and exit codes), with state and outputs under ``DIR``, and prints progress as it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.daemon import Daemon
from ce_daemon.registry import Registry
from ce_daemon.simulator.process import SimulatorProcess, simulator_process

DEMO_USER = "admin"
"""The demo's dashboard user (its password is new each run, printed with the dashboard's address)."""
DEMO_TOKEN_ENV = "CE_DEMO_TOKEN"  # noqa: S105 - the name of a variable, not a password
DEMO_TOKEN = "demo-token-not-secret"  # noqa: S105 - the simulator's token, printed nowhere by the daemon
DEMO_LIST_TOKEN_ENV = "CE_DEMO_LIST_TOKEN"  # noqa: S105 - the name of a variable, not a password
DEMO_LIST_TOKEN = "demo-list-token-not-secret"  # noqa: S105 - a second token: its own request budget

PIPELINE = """\
# ce-daemon demo pipeline: written by `ce-daemon demo`, run exactly as `ce-daemon run -c` would.
# Edit it and send SIGHUP to the demo process to see a reload by diff.
version: 1
state:
  path: {state}
health:
  interval: 30s
  syslog:
    target: udp://127.0.0.1:{syslog_port}   # the demo prints what arrives here as [health] lines
shutdown_grace: 10s
spool:
  max_bytes: 256MiB
http:
  listen: 127.0.0.1:0                       # /metrics, /healthz, /readyz; port 0: the system picks a free one
  public: [/metrics, /readyz]               # no token asked here; the rest needs one (ce-daemon token)
tenants:
  - name: demo
    url: {url}
    token: {{$env: {token_env}}}            # secrets are references, never inline
    rate_limit: 4                           # requests per second, shared by every poller of the tenant
    start: 2h                               # first pull starts 2 hours back (the simulator's backlog)
logs:
  routes:
    - name: alerts-cef
      tenant: demo
      alerts: [dlp, malware, malsite, compromisedcredential, policy, uba]
      format: cef
      sink: {{type: file, path: out/alerts.cef}}
    - name: high-severity-leef
      tenant: demo
      alerts: [dlp, malware, malsite]
      filter: {{severity: {{$in: [high, critical]}}}}
      format: leef
      sink: {{type: file, path: out/high-severity.leef}}
    - name: events-json
      tenant: demo
      events: [page, network, audit]
      filter: {{$or: [{{type: {{$ne: page}}}}, {{app: {{$exists: true}}}}]}}
      format: json
      sink: {{type: file, path: out/events.ndjson, rotate_bytes: 64MiB}}
threats:
  # The simulator's malsite alerts name hosts under example.net, a name reserved for documentation
  # that the guards would refuse: switched off for the demo only.
  guards: {{documentation_domains: false}}
  expire_every: 1m
  sources:
    - name: netskope                        # Malware alerts' file hashes, malsite alerts' URLs
      netskope: {{tenant: demo}}
    - name: local-feed                      # a plain-text list (edit it: the next poll applies it)
      interval: 30s
      plugin: {{type: feed, path: feeds/blocklist.txt, tags: [demo-feed]}}
  destinations:
    - name: netskope-urls                   # a URL list of the simulated tenant (GET /_sim/lists shows it)
      interval: 10s
      # a token of its own, as CE's plugins are configured: the pollers' budget stays theirs
      plugin: {{type: netskope_url_list, url: {url}, token: {{$env: {list_token_env}}}, list: ce-daemon-demo}}
    - name: edl                             # a list firewalls poll: curl it
      interval: 10s
      plugin: {{type: edl, listen: 127.0.0.1, port: {edl_port}, path: /edl.txt}}
  sharing:
    - name: urls-to-netskope
      to: netskope-urls
      types: [url, domain, hostname]
    - name: everything-to-edl
      to: edl
"""

TICKETS = """\
tickets:
  destinations:
    - name: inbox                           # the demo's stand-in for a ticketing system: out/tickets.ndjson
      rate_limit: 20
      plugin: {{type: webhook, url: {inbox_url}}}
  rules:
    - name: high-severity
      tenant: demo
      alerts: [dlp, malware, compromisedcredential]
      filter: {{severity: {{$in: [high, critical]}}}}
      dedup: {{fields: [user, alert_type], window: 1h}}   # a ticket per user and alert type, updated
      queues:
        - to: inbox
          title: "${{alert_type}} alert for ${{user}}"
"""

RISK = """\
risk:
  evaluate_every: 5s
  sources:
    - name: netskope-uba                    # users: each one's latest UBA alert score (higher = riskier)
      netskope: {{tenant: demo}}
    - name: netskope-apps                   # applications: their Cloud Confidence Index in application events
      netskope: {{tenant: demo, stream: application}}
    - name: netskope-devices                # devices: the Netskope client's status (enabled, disabled…)
      netskope: {{tenant: demo, stream: clientstatus}}
  actions:
    - name: watchlist                       # a file a person can read: out/risky-users.json
      plugin: {{type: risk_file, path: out/risky-users.json}}
    - name: tell-the-soc                    # a notification through a ticket destination: the inbox
      notify: {{type: webhook, url: {inbox_url}}}
  rules:
    - name: critical-users
      entity: user
      filter: {{band: critical}}              # in when the combined score enters Critical, out when it leaves
      actions: [watchlist, tell-the-soc]
    - name: unprotected-devices
      entity: device
      filter: {{band: critical}}              # the client is disabled: on the watchlist until it is back
      actions: [watchlist]
"""

BLOCKLIST = """\
# the demo's local feed: one value a line; defanged values are refanged, bad ones refused and counted
hxxp://malware-drop[.]biz/payload.exe
phish-login.biz
203.0.114.66
cdn.evil-updates.net
44d88612fea8a8f36de82e1278abb02f
275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f
10.1.2.3
not a value at all
"""


class _HealthPrinter(asyncio.DatagramProtocol):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        text = data.decode("utf-8", "replace").strip()
        message = text.split(": ", 1)[-1] if "]: " in text else text
        print(f"[health] {message}", flush=True)  # noqa: T201 - the demo shows what syslog receives


async def run_demo(directory: Path, duration: float, registry: Registry) -> int:
    """Start the simulator and the demo pipeline; run until ^C (or ``duration`` seconds)."""
    directory = directory.resolve()  # noqa: ASYNC240 - once, before anything runs
    (directory / "out").mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_HealthPrinter, local_addr=("127.0.0.1", 0))
    syslog_port = transport.get_extra_info("sockname")[1]
    # The simulator runs in a process of its own, as a tenant would: on the daemon's event loop it
    # would stamp arrivals late while the daemon parses a page, and refuse requests a tenant accepts.
    options: dict[str, object] = {
        "token": [DEMO_TOKEN, DEMO_LIST_TOKEN],
        "seed": 7,
        "backlog": 5_000,
        "backlog_span": 3_600,
        "arrival_rate": 20.0,
        "idle_wait": 2.0,
    }
    try:
        async with simulator_process(options) as sim:
            url = sim.url
            path = directory / "pipeline.yaml"
            (directory / "feeds").mkdir(exist_ok=True)
            blocklist = directory / "feeds" / "blocklist.txt"
            if not blocklist.exists():  # a person's edits survive the next demo
                blocklist.write_text(BLOCKLIST, encoding="utf-8")
            edl_port = _free_port()
            inbox = _TicketInbox(directory / "out" / "tickets.ndjson")
            inbox_url = await inbox.start()
            path.write_text(
                PIPELINE.format(
                    state=directory / "state" / "ce-daemon.db",
                    url=url,
                    syslog_port=syslog_port,
                    token_env=DEMO_TOKEN_ENV,
                    list_token_env=DEMO_LIST_TOKEN_ENV,
                    edl_port=edl_port,
                )
                + TICKETS.format(inbox_url=inbox_url)
                + RISK.format(inbox_url=inbox_url),
                encoding="utf-8",
            )
            _say(f"tenant simulator on {url}; pipeline written to {path}")
            _say(f"outputs in {directory / 'out'} — try: tail -f {directory / 'out' / 'alerts.cef'}")
            edl = f"http://127.0.0.1:{edl_port}/edl.txt"
            _say(f"threat indicators: curl -s {edl}  |  ce-daemon iocs stats -c {path}")
            _say(f"the tenant's URL lists: curl -s {url}/_sim/lists  |  the local feed: {blocklist}")
            tickets_file = directory / "out" / "tickets.ndjson"
            _say(f"tickets: tail -f {tickets_file}  |  ce-daemon tickets list -c {path}")
            watchlist = directory / "out" / "risky-users.json"
            _say(f"risk: ce-daemon risk entities -c {path}  |  the watchlist: {watchlist}")
            _say(f"stop with ^C; edit the pipeline and `kill -HUP {os.getpid()}` to reload")
            environ = {**os.environ, DEMO_TOKEN_ENV: DEMO_TOKEN, DEMO_LIST_TOKEN_ENV: DEMO_LIST_TOKEN}
            login = await _first_login(directory / "state" / "ce-daemon.db")
            daemon = Daemon(path, registry, environ=environ)
            tasks = [
                asyncio.create_task(_progress(daemon, directory)),
                asyncio.create_task(_announce(daemon, login)),
            ]
            if duration > 0:
                tasks.append(asyncio.create_task(_stop_after(duration)))
            try:
                code = await daemon.run()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await _summary(directory, sim)
            await _risk_summary(path)
            await inbox.stop()
            return code
    finally:
        transport.close()


async def _first_login(state: Path) -> tuple[str, str]:
    """A dashboard password for the demo's admin (new each run: it is printed) and an admin API token."""
    from ce_daemon.access import AccessStore, Role
    from ce_daemon.config.model import StateSettings
    from ce_daemon.daemon import state_migrations
    from ce_daemon.jobs import Jobs
    from ce_daemon.store import open_store

    password = secrets.token_urlsafe(12)
    state.parent.mkdir(parents=True, exist_ok=True)
    async with await open_store(StateSettings(path=state), state_migrations(Jobs.discover())) as store:
        access = AccessStore(store)
        if not await access.set_password(DEMO_USER, password):
            await access.add_user(DEMO_USER, Role.ADMIN, password)
        token = await access.create_token(f"demo-{int(time.time())}", Role.ADMIN)
    return password, token


async def _stop_after(seconds: float) -> None:
    await asyncio.sleep(seconds)
    os.kill(os.getpid(), signal.SIGTERM)  # the same path as a real stop


async def _announce(daemon: Daemon, login: tuple[str, str]) -> None:
    await daemon.web.listening.wait()
    password, token = login
    _say(f"metrics on {daemon.web.url}metrics — try: curl -s {daemon.web.url}metrics | grep sent_records")
    _say(f"dashboard on {daemon.web.url}ui/ — first login: user {DEMO_USER}, password {password}")
    api = f"{daemon.web.url}api/v1/status"
    _say(f"API token (admin): {token} — try: curl -s -H 'Authorization: Bearer {token}' {api}")


async def _progress(daemon: Daemon, directory: Path) -> None:
    while True:
        await asyncio.sleep(3)
        with contextlib.suppress(Exception):
            snapshot = await daemon.status_snapshot()
            pulled = sum(
                int((c.get("counters") or {}).get("records", 0))
                for c in snapshot["components"]
                if c["kind"] in ("poller", "history")
            )
            routes = [c for c in snapshot["components"] if c["kind"] == "route"]
            shipped = ", ".join(
                f"{c['name'].removeprefix('route:')}={(c.get('counters') or {}).get('sent', 0)}"
                for c in routes
            )
            spool = snapshot.get("spool") or {}
            threats = (snapshot.get("jobs") or {}).get("threats") or {}
            tickets = (snapshot.get("jobs") or {}).get("tickets") or {}
            risk = (snapshot.get("jobs") or {}).get("risk") or {}
            scored = {
                kind: (sum(n for key, n in risk.items() if key.startswith(f"{kind}s_")),
                       risk.get(f"{kind}s_critical", 0))
                for kind in ("user", "device", "application")
            }  # fmt: skip
            entities = ", ".join(
                f"{kind}s {n} ({critical} critical)" for kind, (n, critical) in scored.items()
            )
            shared = ", ".join(
                f"{key.removeprefix('shared_')}={value}"
                for key, value in threats.items()
                if key.startswith("shared_")
            )
            _say(
                f"gen {snapshot['generation']} | components {snapshot['components_ok']}/"
                f"{snapshot['components_total']} ok | pulled {pulled} records | shipped {shipped} | "
                f"spool {spool.get('records', 0)} records | IOCs {threats.get('iocs_active', 0)} active,"
                f" shared {shared or 'nothing yet'} | tickets {tickets.get('tickets', 0)}"
                f" | scored {entities}"
            )


async def _summary(directory: Path, sim: SimulatorProcess) -> None:
    stats = await sim.stats()
    served = sum(sum(per_index.values()) for per_index in stats["records_served"].values())
    _say(
        f"simulator served {served} records in {stats['requests_total']} requests; highest rate "
        f"{stats['max_requests_per_second']} req/s in any one-second window; "
        f"429s sent {stats['rate_limited']}"
    )
    for out in sorted((directory / "out").glob("*")):
        with contextlib.suppress(OSError):
            lines = sum(1 for _ in out.open("rb"))
            _say(f"{out}: {lines} lines")


async def _risk_summary(pipeline: Path) -> None:
    """Run ``ce-daemon risk trend`` on the demo's state: each type's average today, per day, delta, trend."""
    _say(f"risk: each type's daily average (0-1000, higher is safer): ce-daemon risk trend -c {pipeline}")
    with contextlib.suppress(OSError):
        shown = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ce_daemon", "risk", "trend", "-c", str(pipeline)
        )
        await shown.wait()


class _TicketInbox:
    """The demo's stand-in for a ticketing system: the ``webhook`` ticket destination posts here, and
    each ticket and update becomes a line of ``out/tickets.ndjson`` a person can tail."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/tickets", self._receive)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/tickets"

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        line = {k: body.get(k) for k in ("action", "key", "rule", "title", "severity", "count")}
        if line["key"] is None and isinstance(body.get("ref"), dict):
            line["key"] = body["ref"].get("id")  # an update or resolve names the ticket it is about
        with self.path.open("ab") as out:
            out.write(orjson.dumps(line) + b"\n")
        return web.json_response({"id": body.get("key"), "url": f"{request.url}#{body.get('key')}"})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _free_port() -> int:
    """A port nothing listens on now (the EDL's; the demo runs alone, so nothing takes it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _say(text: str) -> None:
    print(f"[demo] {text}", file=sys.stdout, flush=True)  # noqa: T201 - the demo talks to a person
