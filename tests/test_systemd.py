"""sd_notify messages as the service manager receives them."""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ce_daemon.systemd import Notifier
from ce_daemon.testing.sockets import NotifySocket


@pytest.fixture
async def notify(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    async with NotifySocket(tmp_path) as sock:
        yield sock


@pytest.fixture
def notifier(notify: NotifySocket) -> Iterator[Notifier]:
    sender = Notifier.from_env(notify.env)
    yield sender
    sender.close()


async def test_ready_sends_ready_and_status_in_one_datagram(notify: NotifySocket, notifier: Notifier) -> None:
    """ready() sends READY=1 and STATUS= together."""
    notifier.ready("running gen=1 pollers=3/3 sinks=4/4")
    assert await notify.receive() == "READY=1\nSTATUS=running gen=1 pollers=3/3 sinks=4/4"


async def test_reloading_carries_monotonic_usec_in_the_same_datagram(
    notify: NotifySocket, notifier: Notifier
) -> None:
    """reloading() sends RELOADING=1, the current CLOCK_MONOTONIC in µs and STATUS= in one datagram."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading("reloading")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = await notify.receive()
    found = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)\nSTATUS=reloading", message)
    assert found, message
    assert before <= int(found[1]) <= after


async def test_stopping_sends_stopping_and_status(notify: NotifySocket, notifier: Notifier) -> None:
    """stopping() sends STOPPING=1 and STATUS= together."""
    notifier.stopping("draining 2 sinks")
    assert await notify.receive() == "STOPPING=1\nSTATUS=draining 2 sinks"


async def test_status_sends_status_alone(notify: NotifySocket, notifier: Notifier) -> None:
    """status() sends only STATUS=, UTF-8 encoded."""
    notifier.status("chargement de pipeline.yaml — étape 1")
    assert await notify.receive() == "STATUS=chargement de pipeline.yaml — étape 1"


async def test_multi_line_status_is_flattened_to_one_line(notify: NotifySocket, notifier: Notifier) -> None:
    """A status with line breaks is sent as one line, so it cannot inject other fields."""
    notifier.status("reload rejected\nREADY=1\r\n  3 errors\n")
    assert await notify.receive() == "STATUS=reload rejected READY=1 3 errors"


async def test_watchdog_messages(notify: NotifySocket, notifier: Notifier) -> None:
    """watchdog(), watchdog_trigger() and extend_timeout() send their single fields."""
    notifier.watchdog()
    notifier.watchdog_trigger()
    notifier.extend_timeout(15)
    assert [await notify.receive() for _ in range(3)] == [
        "WATCHDOG=1",
        "WATCHDOG=trigger",
        "EXTEND_TIMEOUT_USEC=15000000",
    ]


async def test_send_joins_fields_with_newlines(notify: NotifySocket, notifier: Notifier) -> None:
    """send() puts all its fields in one datagram, newline separated."""
    notifier.send("READY=1", "STATUS=up", "ERRNO=0")
    assert await notify.receive() == "READY=1\nSTATUS=up\nERRNO=0"


async def test_abstract_socket_address_is_used() -> None:
    """An @name NOTIFY_SOCKET reaches the abstract-namespace socket (the branch cloud-init got wrong)."""
    async with NotifySocket(abstract=True) as notify:
        assert notify.path.startswith("@")
        notifier = Notifier.from_env(notify.env)
        try:
            notifier.ready("up")
            assert await notify.receive() == "READY=1\nSTATUS=up"
        finally:
            notifier.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    """With NOTIFY_SOCKET unset the notifier is disabled and every call is a silent no-op."""
    notifier = Notifier.from_env({})
    with capture_logs() as logs:
        notifier.ready("up")
        notifier.reloading("reloading")
        notifier.stopping("stopping")
        notifier.watchdog()
        notifier.close()
    assert not notifier.enabled
    assert logs == []


def test_relative_socket_path_is_refused_without_error() -> None:
    """A NOTIFY_SOCKET that is neither /absolute nor @abstract disables the notifier and does not raise."""
    with capture_logs() as logs:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "run/notify.sock"})
        notifier.ready("up")
    assert not notifier.enabled
    assert [entry["event"] for entry in logs] == ["systemd.notify_failed"]


def test_unreachable_socket_is_logged_once_at_debug(tmp_path: Path) -> None:
    """Sending to a socket that does not exist never raises and is logged once, at debug."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    try:
        with capture_logs() as logs:
            notifier.ready("up")
            notifier.status("still up")
    finally:
        notifier.close()
    assert notifier.enabled
    assert [(entry["event"], entry["log_level"]) for entry in logs] == [("systemd.notify_failed", "debug")]


async def test_sending_resumes_when_the_socket_appears(tmp_path: Path) -> None:
    """After failed sends, a socket created later receives the next message."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        notifier.status("lost")
        async with NotifySocket(tmp_path) as notify:
            notifier.status("found")
            assert await notify.receive() == "STATUS=found"
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
    ids=["usec", "our-pid", "other-pid", "bad-pid", "zero", "garbage", "unset"],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid_only(
    environ: dict[str, str], interval: float | None
) -> None:
    """watchdog_interval() is WATCHDOG_USEC/2 in seconds; None when unset, invalid or for another pid."""
    assert Notifier.from_env(environ).watchdog_interval() == interval
