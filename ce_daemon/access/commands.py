"""``ce-daemon token|user|audit``: manage API tokens and local users, and read the audit log.

They work on the state database the pipeline file names (only its ``state:`` section must be valid),
while the daemon runs or not: a token made or revoked counts at the daemon's next request.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import structlog

from ce_daemon.access.credentials import MAX_PASSWORD, Role, password_problem
from ce_daemon.access.store import AccessStore, AuditLog, NameTakenError
from ce_daemon.files import UnusableFileError, read_regular_file
from ce_daemon.store import Store, StoreError

__all__ = ["add_access_commands"]

EXIT_CONFIG = os.EX_CONFIG
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
ROLES = [str(role) for role in Role]


def add_access_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``token``, ``user`` and ``audit``."""
    token = sub.add_parser("token", help="manage API tokens", description="Manage the listener's API tokens.")
    tokens = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = _with_config(tokens.add_parser("create", help="make a token (its secret is printed once)"))
    create.add_argument("name", help="what the token is for (e.g. prometheus, ci)")
    create.add_argument("--role", choices=ROLES, required=True)
    _with_config(tokens.add_parser("list", help="list tokens (never their secret)"))
    revoke = _with_config(tokens.add_parser("revoke", help="revoke a token for good"))
    revoke.add_argument("name")
    token.set_defaults(func=lambda args: _run(args, _token))

    user = sub.add_parser("user", help="manage dashboard users", description="Manage local dashboard users.")
    users = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = _with_password(_with_config(users.add_parser("add", help="add a user")))
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    passwd = _with_password(_with_config(users.add_parser("passwd", help="set a user's password")))
    passwd.add_argument("name")
    remove = _with_config(users.add_parser("remove", help="remove a user (and end their sessions)"))
    remove.add_argument("name")
    _with_config(users.add_parser("list", help="list users"))
    user.set_defaults(func=lambda args: _run(args, _user))

    audit = _with_config(
        sub.add_parser(
            "audit", help="show the audit log", description="Show the latest audit events, oldest first."
        )
    )
    audit.add_argument("--limit", type=int, default=50, help="how many of the latest events (default 50)")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(func=lambda args: _run(args, _audit), action="list")


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "-c", "--config", type=Path, required=True, help="the pipeline file (its state: section)"
    )
    return parser


def _with_password(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--password-file", type=Path, help="read the password from this regular file (else: asked twice)"
    )
    return parser


def _run(args: argparse.Namespace, action: Callable[[argparse.Namespace, Store], Awaitable[int]]) -> int:
    from ce_daemon.config.locate import locate_state
    from ce_daemon.daemon import state_migrations
    from ce_daemon.jobs import Jobs
    from ce_daemon.store import open_store

    name = getattr(args, "name", None)
    if name is not None and not _NAME.fullmatch(name):
        print(
            f"{args.command}: a name is 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit",
            file=sys.stderr,
        )
        return 2
    located = locate_state(args.config)
    if located is None:
        return EXIT_CONFIG
    # stdout carries the listing or the new token alone; the store's notes (a migration) go to stderr
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )

    async def run() -> int:
        async with await open_store(located[1], state_migrations(Jobs.discover())) as store:
            return await action(args, store)

    try:
        return asyncio.run(run())
    except StoreError as exc:
        print(f"{args.command} {args.action}: {exc}", file=sys.stderr)
        return 1


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid={os.getuid()}"


async def _token(args: argparse.Namespace, store: Store) -> int:
    access, audit = AccessStore(store), AuditLog(store)
    if args.action == "create":
        try:
            secret = await access.create_token(args.name, Role(args.role))
        except NameTakenError as exc:
            print(f"token create: {exc}", file=sys.stderr)
            return 1
        await audit.record("token.create", actor=_actor(), detail=f"{args.name} role={args.role}")
        print(secret)
        print(f"token {args.name!r} ({args.role}) made: the line above is shown this once", file=sys.stderr)
        return 0
    if args.action == "revoke":
        if not await access.revoke_token(args.name):
            print(f"token revoke: no token {args.name!r} in use", file=sys.stderr)
            return 1
        await audit.record("token.revoke", actor=_actor(), detail=args.name)
        print(f"token {args.name!r} revoked")
        return 0
    for token in await access.tokens():
        used = _when(token.last_used) if token.last_used else "never used"
        state = "REVOKED" if token.revoked else "active"
        print(
            f"{token.name:<24} {token.role:<8} ced_{token.token_id}_…  {state:<7} "
            f"made {_when(token.created)}, {used}"
        )
    return 0


async def _user(args: argparse.Namespace, store: Store) -> int:
    access, audit = AccessStore(store), AuditLog(store)
    if args.action == "list":
        for user in await access.users():
            print(
                f"{user.name:<24} {user.role:<8} added {_when(user.created)}, "
                f"password set {_when(user.changed)}"
            )
        return 0
    if args.action == "remove":
        if not await access.remove_user(args.name):
            print(f"user remove: no user {args.name!r}", file=sys.stderr)
            return 1
        await audit.record("user.remove", actor=_actor(), detail=args.name)
        print(f"user {args.name!r} removed")
        return 0
    password = _password(args)
    if password is None:
        return 1
    if args.action == "add":
        try:
            await access.add_user(args.name, Role(args.role), password)
        except NameTakenError as exc:
            print(f"user add: {exc}", file=sys.stderr)
            return 1
        await audit.record("user.add", actor=_actor(), detail=f"{args.name} role={args.role}")
        print(f"user {args.name!r} ({args.role}) added")
        return 0
    if not await access.set_password(args.name, password):
        print(f"user passwd: no user {args.name!r}", file=sys.stderr)
        return 1
    await audit.record("user.passwd", actor=_actor(), detail=args.name)
    print(f"password of {args.name!r} changed (their sessions ended)")
    return 0


def _password(args: argparse.Namespace) -> str | None:
    """The new password, from ``--password-file`` (a regular file) or asked twice; None (said why)."""
    where = f"user {args.action}"
    if args.password_file is not None:
        try:
            raw = read_regular_file(args.password_file, limit=MAX_PASSWORD + 2)
        except UnusableFileError as exc:
            print(f"{where}: --password-file {exc}", file=sys.stderr)
            return None
        try:
            password = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError:
            print(f"{where}: --password-file {args.password_file} is not UTF-8 text", file=sys.stderr)
            return None
    else:
        if not sys.stdin.isatty():
            print(f"{where}: no terminal to ask for the password: give --password-file", file=sys.stderr)
            return None
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print(f"{where}: the two passwords differ", file=sys.stderr)
            return None
    problem = password_problem(password)
    if problem is not None:
        print(f"{where}: {problem}", file=sys.stderr)
        return None
    return password


async def _audit(args: argparse.Namespace, store: Store) -> int:
    events = await AuditLog(store).latest(max(1, min(args.limit, 100_000)))
    for event in events:
        if args.json:
            print(orjson.dumps(event).decode())
            continue
        who = " ".join(str(event[k]) for k in ("actor", "address") if event[k])
        detail = f": {event['detail']}" if event["detail"] else ""
        print(f"{_when(event['at'])} {event['action']} {event['outcome']} {who}{detail}")
    return 0


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
