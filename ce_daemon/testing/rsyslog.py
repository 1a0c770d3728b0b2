"""A real rsyslogd on loopback, as the receiving end of syslog tests.

``RsyslogServer`` writes an rsyslog configuration of its own (no system inputs, no ``/dev/log``, a
work directory and pidfile under the test's folder), starts ``rsyslogd -n`` as a child process with
TCP, TLS and UDP listeners on 127.0.0.1, and records every message it receives (the raw message and
the fields rsyslog parsed from its header) as JSON lines in a file the test reads back::

    async with RsyslogServer(tmp_path, tcp=True, tls=True) as rsyslog:
        ...  # send to rsyslog.tcp_port / rsyslog.tls_port (CA: rsyslog.certificates.ca_file)
        received = await rsyslog.wait_for_lines(100, timeout=30)

Ports are chosen by the kernel (port 0) and read back from rsyslog itself, so parallel tests never
race for one; ``restart()`` brings the same listeners back on the same ports. The TLS listener uses
the ``gtls`` driver (Debian package ``rsyslog-gnutls``) or ``ossl`` (``rsyslog-openssl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

from ce_daemon.testing.harness import terminate
from ce_daemon.testing.sockets import loopback_ports
from ce_daemon.testing.tls import TlsFiles, make_certificates

TlsDriver = Literal["gtls", "ossl"]

_POLL_INTERVAL: Final = 0.02
_STOP_TIMEOUT: Final = 15.0
_MODULE_DIRS: Final = (
    "/usr/lib/x86_64-linux-gnu/rsyslog",
    "/usr/lib/aarch64-linux-gnu/rsyslog",
    "/usr/lib/rsyslog",
)


def rsyslogd_path() -> str | None:
    """Where ``rsyslogd`` is installed (it lives in /usr/sbin, often off a normal user's PATH)."""
    return shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")


def tls_driver_available(driver: TlsDriver = "gtls") -> bool:
    """Whether rsyslog's TLS stream driver ``driver`` is installed."""
    return any(Path(folder, f"lmnsd_{driver}.so").exists() for folder in _MODULE_DIRS)


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message as rsyslog received it.

    ``raw`` is the whole syslog message (header included, framing removed); ``msg`` is the MSG part as
    rsyslog parsed it (RFC 3164 keeps the space after ``TAG:``); ``version`` is 1 for RFC 5424 and 0
    for anything else; ``input`` names the listener (``tcp``, ``tls`` or ``udp``).
    """

    input: str
    raw: str
    msg: str
    hostname: str
    app_name: str
    facility: int
    severity: int
    version: int
    timestamp: str


# Each received message becomes one JSON object per line: the raw message and what rsyslog parsed.
_TEMPLATE: Final = """template(name="ce_received" type="list") {
  constant(value="{")
  property(outname="input" name="inputname" format="jsonf") constant(value=",")
  property(outname="raw" name="rawmsg" format="jsonf") constant(value=",")
  property(outname="msg" name="msg" format="jsonf") constant(value=",")
  property(outname="hostname" name="hostname" format="jsonf") constant(value=",")
  property(outname="app_name" name="app-name" format="jsonf") constant(value=",")
  property(outname="facility" name="syslogfacility" format="jsonf") constant(value=",")
  property(outname="severity" name="syslogseverity" format="jsonf") constant(value=",")
  property(outname="version" name="protocol-version" format="jsonf") constant(value=",")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  constant(value="}\\n")
}
"""


class RsyslogServer:
    """``rsyslogd`` listening on 127.0.0.1 (TCP, TLS and/or UDP), every message it receives recorded.

    Use as an async context manager, or call :meth:`start` and :meth:`stop`. ``certificates`` is the
    TLS listener's CA, certificate and key (made in ``directory/pki`` when not given); with
    ``require_client_certificate`` the listener only accepts clients holding a certificate of that CA.
    ``max_message_size`` is rsyslog's ``maxMessageSize`` (longer messages are truncated by rsyslog).
    """

    def __init__(
        self,
        directory: Path,
        *,
        tcp: bool = True,
        tls: bool = False,
        udp: bool = False,
        certificates: TlsFiles | None = None,
        tls_driver: TlsDriver = "gtls",
        require_client_certificate: bool = False,
        max_message_size: int = 2 * 1024 * 1024,
        startup_timeout: float = 30.0,
    ) -> None:
        if not (tcp or tls or udp):
            raise ValueError("RsyslogServer needs at least one of tcp, tls and udp")
        self.directory = directory / "rsyslog"
        self.listeners = tuple(name for name, wanted in (("tcp", tcp), ("tls", tls), ("udp", udp)) if wanted)
        self.certificates = certificates
        self.tls_driver: TlsDriver = tls_driver
        self.require_client_certificate = require_client_certificate
        self.max_message_size = max_message_size
        self.startup_timeout = startup_timeout
        self.ports: dict[str, int] = {}
        self.messages: list[ReceivedMessage] = []
        self.process: asyncio.subprocess.Process | None = None
        self._output = self.directory / "received.jsonl"
        self._internal = self.directory / "internal.log"
        self._console = self.directory / "console.log"
        self._offset = 0
        self._partial = b""

    @property
    def tcp_port(self) -> int:
        """The plain TCP listener's port."""
        return self.ports["tcp"]

    @property
    def tls_port(self) -> int:
        """The TLS listener's port."""
        return self.ports["tls"]

    @property
    def udp_port(self) -> int:
        """The UDP listener's port."""
        return self.ports["udp"]

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> Self:
        """Start rsyslogd and return once every listener is bound (same ports as before on a restart)."""
        if self.process is not None:
            raise RuntimeError("rsyslogd is already running")
        binary = rsyslogd_path()
        if binary is None:
            raise RuntimeError("rsyslogd is not installed (Debian: apt-get install rsyslog)")
        self.directory.mkdir(parents=True, exist_ok=True)
        if "tls" in self.listeners and self.certificates is None:
            self.certificates = make_certificates(self.directory / "pki")
        for name in self.listeners:
            self._port_file(name).unlink(missing_ok=True)
        config = self.directory / "rsyslog.conf"
        config.write_text(self._config(), encoding="utf-8")
        pidfile = self.directory / "rsyslogd.pid"
        pidfile.unlink(missing_ok=True)
        with self._console.open("ab") as console:
            self.process = await asyncio.create_subprocess_exec(
                binary, "-n", "-f", str(config), "-i", str(pidfile),
                stdin=asyncio.subprocess.DEVNULL, stdout=console, stderr=console,
            )  # fmt: skip
        try:
            async with asyncio.timeout(self.startup_timeout):
                await self._wait_until_listening()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        """SIGTERM rsyslogd (it writes out what it holds) and wait for it; SIGKILL if it hangs."""
        process, self.process = self.process, None
        if process is None:
            return
        await terminate(process, _STOP_TIMEOUT)
        self._read_new()

    async def restart(self) -> None:
        """Stop and start again on the same ports (connections to the old process are closed)."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- what arrived ------------------------------------------------------------------------------

    async def wait_for_lines(self, count: int, timeout: float = 30.0) -> list[ReceivedMessage]:
        """Every message received so far, once there are at least ``count``.

        rsyslogd is another process writing a file, so there is nothing to await but the file itself:
        it is polled at a short interval, within ``timeout``.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._read_new()
                    if len(self.messages) >= count:
                        return list(self.messages)
                    if self.process is not None and self.process.returncode is not None:
                        raise RuntimeError(
                            f"rsyslogd exited ({self.process.returncode}):\n{self.diagnostics()}"
                        )
                    await asyncio.sleep(_POLL_INTERVAL)
        except TimeoutError:
            raise TimeoutError(
                f"rsyslogd received {len(self.messages)} of {count} messages within {timeout} s\n"
                + self.diagnostics()
            ) from None

    def diagnostics(self) -> str:
        """The tail of rsyslogd's own messages and console output, for failure reports."""
        return "\n".join(
            f"--- {path.name}:\n" + path.read_text(errors="replace")[-3000:]
            for path in (self._internal, self._console)
            if path.exists()
        )

    def _read_new(self) -> None:
        try:
            with self._output.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line:
                self.messages.append(_parse(line))

    # -- configuration and readiness ---------------------------------------------------------------

    def _port_file(self, name: str) -> Path:
        return self.directory / f"{name}.port"

    def _config(self) -> str:
        q = _quote
        settings = [
            f"workDirectory={q(self.directory)}",
            f"maxMessageSize={q(self.max_message_size)}",
            # Byte-exact messages: no #011-style escaping of tabs and other control characters.
            'parser.escapeControlCharactersOnReceive="off"',
            # rsyslogd's own messages stay in this instance (internal.log), never reach /dev/log.
            'processInternalMessages="on"',
        ]
        lines = [
            f"global({' '.join(settings)})",
            _TEMPLATE,
            'ruleset(name="ce_received") {',
            f'  action(type="omfile" file={q(self._output)} template="ce_received" flushOnTXEnd="on")',
            "}",
        ]
        if "tcp" in self.listeners or "tls" in self.listeners:
            lines.append('module(load="imtcp" maxSessions="200")')
        if "udp" in self.listeners:
            lines.append('module(load="imudp")')
        for name in self.listeners:
            port = self.ports.get(name, 0)
            common = f'name="{name}" address="127.0.0.1" port="{port}" ruleset="ce_received"'
            if name == "udp":
                lines.append(f'input(type="imudp" {common})')
                continue
            extra = f" listenPortFileName={q(self._port_file(name))}"
            if name == "tls":
                files = self.certificates
                assert files is not None
                auth = "x509/certvalid" if self.require_client_certificate else "anon"
                extra += (
                    f' streamDriver.name="{self.tls_driver}" streamDriver.mode="1"'
                    f' streamDriver.authMode="{auth}" streamDriver.CAFile={q(files.ca_file)}'
                    f" streamDriver.CertFile={q(files.cert_file)} streamDriver.KeyFile={q(files.key_file)}"
                )
            lines.append(f'input(type="imtcp" {common}{extra})')
        # rsyslogd's own messages (start, errors) go to a file of their own, never to the received ones.
        lines.append(f'action(type="omfile" file={q(self._internal)})')
        return "\n".join(lines) + "\n"

    async def _wait_until_listening(self) -> None:
        # Polling: readiness is only visible in files and sockets of another process.
        pending = set(self.listeners)
        while pending:
            assert self.process is not None
            if self.process.returncode is not None:
                raise RuntimeError(f"rsyslogd exited ({self.process.returncode}):\n{self.diagnostics()}")
            for name in sorted(pending):
                port = self._udp_port() if name == "udp" else await self._stream_port(name)
                if port is not None:
                    self.ports[name] = port
                    pending.discard(name)
            if pending:
                await asyncio.sleep(_POLL_INTERVAL)

    async def _stream_port(self, name: str) -> int | None:
        port = self.ports.get(name)
        if port is None:  # rsyslog writes the port file only for a port it chose itself
            try:
                text = self._port_file(name).read_text().strip()
            except FileNotFoundError:
                return None
            if not text.isdigit():
                return None
            port = int(text)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return port

    def _udp_port(self) -> int | None:
        """The port of rsyslogd's UDP socket on 127.0.0.1."""
        assert self.process is not None
        ports = loopback_ports(self.process.pid, "udp")
        return ports[0] if ports else None


def _quote(value: object) -> str:
    text = str(value)
    if '"' in text or "\\" in text:
        raise ValueError(f"rsyslog config value may not contain quotes or backslashes: {text!r}")
    return f'"{text}"'


def _parse(line: bytes) -> ReceivedMessage:
    data = json.loads(line.decode("utf-8", "replace"))
    return ReceivedMessage(
        input=data["input"],
        raw=data["raw"],
        msg=data["msg"],
        hostname=data["hostname"],
        app_name=data["app_name"],
        facility=int(data["facility"]),
        severity=int(data["severity"]),
        version=int(data["version"] or 0),
        timestamp=data["timestamp"],
    )
