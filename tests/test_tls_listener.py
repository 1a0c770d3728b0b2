"""TLS on the HTTP listener: the operator's certificate at TLS 1.3 (1.2 when asked), or a self-signed one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from listener_kit import PASSWORD, add_users, listener_pipeline, listening, make_tokens, request

from ce_daemon.access import Role
from ce_daemon.access.tls import SELF_SIGNED_CERT, SELF_SIGNED_KEY
from ce_daemon.config.load import load_pipeline
from ce_daemon.errors import ConfigError
from ce_daemon.registry import Registry
from ce_daemon.testing import write_pipeline
from ce_daemon.testing.tls import make_certificates


def client(ca_file: Path, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca_file``, pinned to ``version`` when given."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


async def handshake(url: str, context: ssl.SSLContext) -> str | None:
    """The TLS version a handshake with the listener at ``url`` agrees on (raises when it is refused)."""
    parts = urlsplit(url)
    _, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return str(ssl_object.version())
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_tls_13_by_default_refuses_a_tls_12_client_and_serves_a_13_one(tmp_path: Path) -> None:
    """With cert and key and no min_version, a TLS 1.2-only client fails the handshake; 1.3 is served."""
    files = make_certificates(tmp_path / "pki", hosts=("127.0.0.1",))
    tokens = await make_tokens(tmp_path, {"viewer": Role.VIEWER})
    await add_users(tmp_path, {"alice": Role.VIEWER})
    http = {"listen": "127.0.0.1:0", "tls": {"cert": str(files.cert_file), "key": str(files.key_file)}}
    async with listening(tmp_path, http) as listener:
        url = listener.url
        with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
            await handshake(url, client(files.ca_file, ssl.TLSVersion.TLSv1_2))
        agreed = await handshake(url, client(files.ca_file))
        served = await request(
            "GET",
            url + "api/whoami",
            token=tokens["viewer"],
            ssl_context=client(files.ca_file, ssl.TLSVersion.TLSv1_3),
        )
        login = await request(
            "POST",
            url + "login",
            data={"user": "alice", "password": PASSWORD},
            ssl_context=client(files.ca_file),
        )
        with pytest.raises(aiohttp.ClientError):  # plain HTTP on the TLS port: no answer
            await request("GET", url.replace("https://", "http://") + "healthz")
    assert url.startswith("https://127.0.0.1:")
    assert not isinstance(refused.value, ssl.SSLCertVerificationError)  # refused for its version, not trust
    assert agreed == "TLSv1.3"
    assert served.status == 200
    cookie = login.headers["Set-Cookie"]
    assert cookie.startswith("__Host-ced_session=") and "Secure" in cookie and "HttpOnly" in cookie


async def test_a_reload_takes_a_renewed_certificate_without_rebinding(tmp_path: Path) -> None:
    """New PEM files at the same paths, then SIGHUP: the next handshake shows the new certificate."""
    first = make_certificates(tmp_path / "first", hosts=("127.0.0.1",))
    renewed = make_certificates(tmp_path / "renewed", hosts=("127.0.0.1",))
    http = {"listen": "127.0.0.1:0", "tls": {"cert": str(first.cert_file), "key": str(first.key_file)}}
    async with listening(tmp_path, http) as listener:
        before = await handshake(listener.url, client(first.ca_file))
        shutil.copyfile(renewed.cert_file, first.cert_file)
        shutil.copyfile(renewed.key_file, first.key_file)
        listener.daemon.signal(signal.SIGHUP)
        await listener.daemon.wait_for_event("http.certificate_reloaded")
        after = await handshake(listener.url, client(renewed.ca_file))
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake(listener.url, client(first.ca_file))
        listenings = listener.daemon.events("http.listening")
    assert before == after == "TLSv1.3"
    assert len(listenings) == 1  # the same socket: no rebind


async def test_min_version_12_lets_a_tls_12_client_in(tmp_path: Path) -> None:
    """`min_version: "1.2"` serves a TLS 1.2 client (its credential still asked for)."""
    files = make_certificates(tmp_path / "pki", hosts=("127.0.0.1",))
    http = {
        "listen": "127.0.0.1:0",
        "tls": {"cert": str(files.cert_file), "key": str(files.key_file), "min_version": "1.2"},
    }
    async with listening(tmp_path, http) as listener:
        tls12 = client(files.ca_file, ssl.TLSVersion.TLSv1_2)
        agreed = await handshake(listener.url, tls12)
        healthz = await request("GET", listener.url + "healthz", ssl_context=tls12)
        readyz = await request("GET", listener.url + "readyz", ssl_context=tls12)
    assert agreed == "TLSv1.2"
    assert healthz.status == 200 and readyz.status == 401


async def test_self_signed_is_made_once_in_the_data_folder_with_a_warning(tmp_path: Path) -> None:
    """`self_signed: true` writes a certificate and a 0600 key beside the state, warns, and serves them."""
    http = {"listen": "127.0.0.1:0", "tls": {"self_signed": True}}
    data = tmp_path / "state"
    async with listening(tmp_path, http) as listener:
        warning = listener.daemon.events("http.self_signed_certificate")
        healthz = await request("GET", listener.url + "healthz", ssl_context=client(data / SELF_SIGNED_CERT))
    first = (data / SELF_SIGNED_CERT).read_bytes()
    async with listening(tmp_path, http) as again:
        second_warning = again.daemon.events("http.self_signed_certificate")
    assert healthz.status == 200
    assert len(warning) == 1 and warning[0]["level"] == "warning" and len(warning[0]["sha256"]) == 95
    assert os.stat(data / SELF_SIGNED_KEY).st_mode & 0o777 == 0o600
    assert (data / SELF_SIGNED_CERT).read_bytes() == first and second_warning == []


@pytest.mark.parametrize(
    ("tls", "key", "message"),
    [
        ({"cert": "pki", "key": "pki/server.key"}, "cert", "is a directory, not a regular file"),
        ({"cert": "pki/server.pem", "key": "pki/none.key"}, "key", "no such file or directory"),
        ({"cert": "pki/server.pem", "key": "pki/client.key"}, "cert", "are not a usable certificate and key"),
        ({"cert": "pki/server.pem"}, "tls", "TLS needs both `cert` and `key`"),
        ({"self_signed": True, "cert": "pki/server.pem", "key": "pki/server.key"}, "tls", "not both"),
        ({"self_signed": True, "min_version": "1.1"}, "min_version", "'1.2' or '1.3'"),
    ],
)
def test_check_refuses_a_listener_certificate_run_could_not_use(
    tmp_path: Path, tls: dict[str, object], key: str, message: str
) -> None:
    """`check` names http.tls.<key> at its line: a missing, non-regular or mismatched file, a bad shape."""
    make_certificates(tmp_path / "pki", hosts=("127.0.0.1",))
    path = write_pipeline(
        tmp_path / "pipeline.yaml", listener_pipeline(tmp_path, {"listen": "127.0.0.1:0", "tls": tls})
    )
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, Registry.discover(), environ={})
    [problem] = caught.value.problems
    rendered = problem.render()
    assert rendered.startswith(f"{path}:") and f"http.tls{'.' + key if key != 'tls' else ''}" in rendered
    assert message.lower() in rendered.lower(), rendered


def test_a_fifo_as_the_key_is_refused_without_blocking(tmp_path: Path) -> None:
    """A named pipe given as the key is reported as such (check never opens it and waits)."""
    files = make_certificates(tmp_path / "pki", hosts=("127.0.0.1",))
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    http = {"listen": "127.0.0.1:0", "tls": {"cert": str(files.cert_file), "key": str(fifo)}}
    path = write_pipeline(tmp_path / "pipeline.yaml", listener_pipeline(tmp_path, http))
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, Registry.discover(), environ={})
    [problem] = caught.value.problems
    assert "http.tls.key" in problem.render() and "FIFO" in problem.render()


@pytest.mark.parametrize(
    ("http", "warned"),
    [
        ({"listen": "0.0.0.0:9464"}, True),
        ({"listen": "0.0.0.0:9464", "tls": {"self_signed": True}}, False),
        ({"listen": "127.0.0.1:9464"}, False),
    ],
)
def test_plain_http_reachable_from_other_machines_is_warned_of(
    tmp_path: Path, http: dict[str, object], warned: bool
) -> None:
    """`check` warns, at http.listen, of a listener others reach without TLS (credentials in clear)."""
    path = write_pipeline(tmp_path / "pipeline.yaml", listener_pipeline(tmp_path, http))
    warnings = load_pipeline(path, Registry.discover(), environ={}).warnings
    found = [w.render() for w in warnings if "http.listen" in w.render()]
    assert bool(found) is warned
    if warned:
        assert "cross the network in clear" in found[0] and "http.tls" in found[0]
