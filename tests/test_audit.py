"""The audit log: logins, token writes, token and user changes, start, stop and reloads, on both backends."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import orjson
from listener_kit import PASSWORD, add_users, audit_events, cli, listener_pipeline, make_tokens, request

from ce_daemon.access import Role
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.sockets import SyslogReceiver

HTTP = {"listen": "127.0.0.1:0"}


def sha256(path: Path) -> str:
    """The content hash the audit log records of a pipeline file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_lifecycle_logins_and_token_writes_are_audited_with_the_file_hash(tmp_path: Path) -> None:
    """Start, a failed and a good login, a write with a token, an applied and a rejected reload, the stop."""
    tokens = await make_tokens(tmp_path, {"deployer": Role.OPERATOR})
    await add_users(tmp_path, {"alice": Role.VIEWER})
    config = write_pipeline(tmp_path / "pipeline.yaml", listener_pipeline(tmp_path, HTTP))
    started_hash = sha256(config)
    async with DaemonProcess(config) as daemon:
        url = str((await daemon.wait_for_event("http.listening"))["url"])
        await daemon.wait_for_event("daemon.ready")
        failed = await request("POST", url + "login", data={"user": "alice", "password": "not-her-password"})
        good = await request("POST", url + "login", data={"user": "alice", "password": PASSWORD})
        reload = await request("POST", url + "api/reload", token=tokens["deployer"])
        await daemon.wait_for_event("daemon.reload_applied")
        config.write_text(config.read_text() + "unknown_section: 1\n", encoding="utf-8")
        rejected_hash = sha256(config)
        daemon.signal(signal.SIGHUP)
        await daemon.wait_for_event("daemon.reload_rejected")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0
    assert (failed.status, good.status, reload.status) == (401, 200, 202)
    events = [
        e for e in await audit_events(tmp_path) if e["actor"] != "cli" and not e["action"].startswith("user")
    ]
    summary = [(e["action"], e["outcome"], e["actor"]) for e in events]
    assert summary == [
        ("daemon.start", "ok", "daemon"),
        ("login", "failed", "user:alice"),
        ("login", "ok", "user:alice"),
        ("token.write", "ok", "token:deployer"),
        ("daemon.reload", "applied", "daemon"),
        ("daemon.reload", "rejected", "daemon"),
        ("daemon.stop", "ok", "daemon"),
    ]
    by_action = {(e["action"], e["outcome"]): e for e in events}
    assert f"sha256={started_hash}" in by_action["daemon.start", "ok"]["detail"]
    assert f"sha256={started_hash}" in by_action["daemon.reload", "applied"]["detail"]
    assert f"sha256={rejected_hash}" in by_action["daemon.reload", "rejected"]["detail"]
    assert by_action["login", "failed"]["address"] == "127.0.0.1"
    assert by_action["token.write", "ok"]["detail"] == "POST /api/reload"
    logged = [line for line in daemon.lines if line.get("event") == "audit.event"]
    assert [(line["action"], line["outcome"]) for line in logged] == [(a, o) for a, o, _ in summary]
    output = "\n".join(daemon.raw)
    assert PASSWORD not in output and "not-her-password" not in output and tokens["deployer"] not in output


async def test_token_and_user_commands_are_audited_and_listed(tmp_path: Path) -> None:
    """`token create|revoke`, `user add|passwd|remove` each leave a row; `audit` lists them (`--json` too)."""
    config = write_pipeline(tmp_path / "pipeline.yaml", listener_pipeline(tmp_path, HTTP))
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    c = ("-c", str(config))
    steps = [
        ("token", "create", "ci", "--role", "operator", *c),
        ("token", "revoke", "ci", *c),
        ("user", "add", "dora", "--role", "admin", "--password-file", str(secret), *c),
        ("user", "passwd", "dora", "--password-file", str(secret), *c),
        ("user", "remove", "dora", *c),
    ]
    outputs = []
    for step in steps:
        code, out, err = await cli(*step)
        assert code == 0, (step, err)
        outputs.append(out + err)
    token = outputs[0].splitlines()[0]
    code, listing, _ = await cli("audit", *c)
    code_json, as_json, _ = await cli("audit", "--json", "--limit", "3", *c)
    assert code == 0 and code_json == 0
    lines = listing.splitlines()
    assert [line.split()[1:3] for line in lines] == [
        ["token.create", "ok"], ["token.revoke", "ok"], ["user.add", "ok"], ["user.passwd", "ok"],
        ["user.remove", "ok"],
    ]  # fmt: skip
    assert "ci role=operator" in lines[0] and "dora role=admin" in lines[2]
    rows = [orjson.loads(line) for line in as_json.splitlines()]
    assert [row["action"] for row in rows] == ["user.add", "user.passwd", "user.remove"]
    assert all(row["actor"].startswith("cli:") for row in rows)
    for text in (listing, as_json, *outputs[1:]):
        assert token not in text and PASSWORD not in text


async def test_a_password_file_must_be_a_regular_file_and_long_enough(tmp_path: Path) -> None:
    """`user add --password-file` refuses a directory, a missing file and a short password, saying which."""
    config = write_pipeline(tmp_path / "pipeline.yaml", listener_pipeline(tmp_path, HTTP))
    short = tmp_path / "short"
    short.write_text("tiny\n", encoding="utf-8")
    c = ("-c", str(config))
    directory = await cli("user", "add", "eve", "--role", "viewer", "--password-file", str(tmp_path), *c)
    missing = await cli("user", "add", "eve", "--role", "viewer", "--password-file", str(tmp_path / "no"), *c)
    too_short = await cli("user", "add", "eve", "--role", "viewer", "--password-file", str(short), *c)
    listed = await cli("user", "list", *c)
    assert directory[0] == 1 and "is a directory, not a regular file" in directory[2]
    assert missing[0] == 1 and "no such file" in missing[2].lower()
    assert too_short[0] == 1 and "at least 12 characters" in too_short[2] and "tiny" not in too_short[2]
    assert listed[0] == 0 and "eve" not in listed[1]


async def test_audit_events_reach_the_syslog_health_channel_without_secrets(tmp_path: Path) -> None:
    """A failed login and a token write go to syslog as `event=audit.…` lines, with no password nor token."""
    tokens = await make_tokens(tmp_path, {"deployer": Role.OPERATOR})
    async with SyslogReceiver("udp") as syslog:
        settings = listener_pipeline(tmp_path, HTTP)
        settings["health"] = {"interval": "1h", "syslog": {"target": syslog.target}}
        config = write_pipeline(tmp_path / "pipeline.yaml", settings)
        async with DaemonProcess(config) as daemon:
            url = str((await daemon.wait_for_event("http.listening"))["url"])
            start = await syslog.wait_for("event=audit.daemon.start", timeout=30)
            await request("POST", url + "login", data={"user": "mallory", "password": "guessed-password"})
            login = await syslog.wait_for("event=audit.login", timeout=30)
            await request("POST", url + "api/reload", token=tokens["deployer"])
            write = await syslog.wait_for("event=audit.token.write", timeout=30)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    assert "outcome=ok" in start and f"sha256={sha256(config)}" in start
    assert "outcome=failed" in login and "user:mallory" in login and "guessed-password" not in login
    assert "token:deployer" in write and tokens["deployer"] not in write
