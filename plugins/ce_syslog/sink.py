"""Ship formatted records to a syslog receiver over TCP, TLS or UDP.

TCP and TLS use one persistent connection; a batch is framed in one pass and written with a single
``write`` + ``drain``. Syslog has no application-level acknowledgement: when ``drain`` returns, the
batch is in the kernel's send buffer, not necessarily in the receiver's hands. So, before each batch,
a connection the receiver has closed (EOF, reset) is noticed and replaced, and any failure while
writing raises :class:`TransientError` so that the core retries the whole batch on a new connection.
Delivery is at-least-once: a retried batch may repeat records the receiver already had, and a
receiver that dies after ``drain`` loses what was still in flight (the same holds for every syslog
sender; use a receiver with a disk queue where that matters).

UDP sends one datagram per record (RFC 5426) and is best effort: nothing tells a sender that a
datagram was dropped. A refusal the kernel reports (ICMP port unreachable, no route) still raises
:class:`TransientError`.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Final

from ce_daemon.http import ssl_context
from ce_daemon.plugin import (
    Health,
    LogSink,
    OutBatch,
    OutRecord,
    PluginContext,
    SendResult,
    TransientError,
    stamp_or_now,
)
from ce_syslog.options import SyslogSinkOptions

_CLOSE_TIMEOUT: Final = 5.0


class SyslogSink(LogSink[SyslogSinkOptions]):
    """The ``syslog`` log sink."""

    api_version = 1
    max_batch_bytes = None  # a stream has no request size; each message is checked on its own

    def __init__(self, options: SyslogSinkOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self._framer = self.options.framer()
        # The longest message a batch framed at once may hold: no header this framer writes is longer.
        self._batch_limit = self.options.max_message_bytes - self._framer.header_bound()
        self._target = f"syslog receiver {self.options.target}"
        self._ssl: ssl.SSLContext | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._datagrams: socket.socket | None = None
        # health() and send() may both want to connect; one connection attempt at a time.
        self._connecting = asyncio.Lock()

    async def open(self) -> None:
        """Prepare TLS (reads the CA and client certificate files); connections are made on demand."""
        if self.options.protocol == "tls":
            self._ssl = _client_context(self.options, self.context)

    async def health(self) -> Health:
        """TCP/TLS: connect (and handshake), keeping the connection; UDP: resolve the address."""
        try:
            if self.options.protocol == "udp":
                sock = await self._datagram_socket()
                return Health(ok=True, detail=f"udp to {_peer(sock)}")
            _, writer = await self._stream()
        except TransientError as exc:
            return Health(ok=False, detail=str(exc))
        tls = writer.get_extra_info("ssl_object")
        suffix = f" ({tls.version()})" if isinstance(tls, ssl.SSLObject) else ""
        return Health(ok=True, detail=f"connected to {self.options.target}{suffix}")

    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        """Frame and write ``batch``; oversize records are refused one by one, the rest is sent."""
        payload = self._stream_payload(batch)
        if payload is not None:
            await self._write(payload)
            return SendResult()
        frames, rejected = self._frame(batch)
        if frames:
            if self.options.protocol == "udp":
                rejected.extend(await self._send_datagrams(frames))
                rejected.sort()
            else:
                await self._write(b"".join(frame for _, frame in frames))
        return SendResult(rejected=rejected)

    async def close(self) -> None:
        """Close the connection or the UDP socket."""
        await self._drop_stream(None)
        if self._datagrams is not None:
            self._datagrams.close()
            self._datagrams = None

    # -- framing -------------------------------------------------------------------------------------

    def _stream_payload(self, batch: Sequence[OutRecord]) -> bytes | None:
        """The whole batch framed for TCP or TLS at once, when no record in it can be too large (the
        usual batch); None otherwise (``_frame`` then looks at each record)."""
        if self.options.protocol == "udp" or not batch:
            return None
        records = OutBatch.of(batch)
        now = int(time.time())
        return self._framer.frame_all(records.data, records.timestamps, limit=self._batch_limit, now=now)

    def _frame(self, batch: Sequence[OutRecord]) -> tuple[list[tuple[int, bytes]], list[tuple[int, str]]]:
        frame = self._framer.frame
        limit = self.options.max_message_bytes
        udp = self.options.protocol == "udp"
        octet = udp or self.options.framing == "octet"
        now = int(time.time())
        frames: list[tuple[int, bytes]] = []
        rejected: list[tuple[int, str]] = []
        for index, record in enumerate(batch):
            framed = frame(record.data, stamp_or_now(record.timestamp, now))
            if len(framed) > limit or udp:
                # The length prefix (octet) or the trailing LF is framing, not message.
                start = framed.index(b" ") + 1 if octet else 0
                size = len(framed) - start - (0 if octet else 1)
                if size > limit:
                    rejected.append((index, self._too_large(size)))
                    continue
                if udp:
                    framed = framed[start:]
            frames.append((index, framed))
        return frames, rejected

    def _too_large(self, size: int) -> str:
        return (
            f"syslog message of {size} bytes is larger than max_message_bytes "
            f"({self.options.max_message_bytes}) for {self.options.protocol}"
        )

    # -- TCP and TLS ---------------------------------------------------------------------------------

    async def _stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The open connection, or a new one when there is none or the receiver has closed it."""
        async with self._connecting:
            reader, writer = self._reader, self._writer
            if reader is not None and writer is not None:
                # A receiver never sends anything; EOF or an error on our side of the socket means it
                # closed the connection, and writing into it would lose the batch without an error.
                if not (writer.is_closing() or reader.at_eof() or reader.exception() is not None):
                    return reader, writer
                await self._drop_stream("closed by the receiver")
            reader, writer = await self._connect()
            self._reader, self._writer = reader, writer
            self.context.log.info(
                "syslog.connected",
                target=self.options.target,
                local=_local(writer),
                tls=self._ssl is not None,
            )
            return reader, writer

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        options = self.options
        tls = self._ssl
        if options.protocol == "tls" and tls is None:
            tls = self._ssl = _client_context(options, self.context)
        try:
            async with asyncio.timeout(options.connect_timeout):
                return await asyncio.open_connection(
                    options.host,
                    options.port,
                    ssl=tls,
                    server_hostname=(options.tls_server_name or options.host) if tls is not None else None,
                    ssl_handshake_timeout=options.connect_timeout if tls is not None else None,
                )
        except TimeoutError:
            raise TransientError(
                f"{self._target}: no connection within {options.connect_timeout:g} s"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise TransientError(
                f"{self._target}: TLS certificate refused: {exc.verify_message or exc.reason}"
            ) from None
        except ssl.SSLError as exc:
            raise TransientError(f"{self._target}: TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise TransientError(f"{self._target}: cannot connect: {exc.strerror or exc}") from None

    async def _write(self, payload: bytes) -> None:
        _, writer = await self._stream()
        try:
            writer.write(payload)
            async with asyncio.timeout(self.options.write_timeout):
                await writer.drain()
        except TimeoutError:
            await self._drop_stream("write timed out")
            raise TransientError(
                f"{self._target}: the receiver did not take the batch within {self.options.write_timeout:g} s"
            ) from None
        except OSError as exc:
            await self._drop_stream(str(exc) or type(exc).__name__)
            raise TransientError(f"{self._target}: connection lost while sending: {exc}") from None

    async def _drop_stream(self, reason: str | None) -> None:
        """Close the connection: gracefully when ``reason`` is None, else at once, discarding what is buffered
        (the core sends the failed batch again on a new connection)."""
        writer = self._writer
        self._reader = self._writer = None
        if writer is None:
            return
        if reason is None:
            writer.close()
        else:
            self.context.log.warning("syslog.connection_dropped", target=self.options.target, reason=reason)
            writer.transport.abort()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await writer.wait_closed()
        except TimeoutError:
            # A receiver that stopped reading never lets the buffer drain nor answers TLS close_notify.
            writer.transport.abort()
        except OSError:
            pass  # how the connection ended no longer matters

    # -- UDP -----------------------------------------------------------------------------------------

    async def _datagram_socket(self) -> socket.socket:
        if self._datagrams is not None:
            return self._datagrams
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.options.host, self.options.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise TransientError(f"{self._target}: cannot resolve {self.options.host}: {exc}") from None
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.connect(address)  # fixes the peer: kernel refusals (ICMP) come back on later sends
        except OSError as exc:
            sock.close()
            raise TransientError(f"{self._target}: {exc.strerror or exc}") from None
        self._datagrams = sock
        return sock

    async def _send_datagrams(self, frames: list[tuple[int, bytes]]) -> list[tuple[int, str]]:
        sock = await self._datagram_socket()
        loop = asyncio.get_running_loop()
        rejected: list[tuple[int, str]] = []
        for index, datagram in frames:
            try:
                try:
                    sock.send(datagram)
                except BlockingIOError:
                    await loop.sock_sendall(sock, datagram)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    reason = f"syslog message of {len(datagram)} bytes does not fit one UDP datagram here"
                    rejected.append((index, reason))
                    continue
                raise TransientError(f"{self._target}: sending failed: {exc.strerror or exc}") from None
        return rejected


def _client_context(options: SyslogSinkOptions, context: PluginContext) -> ssl.SSLContext:
    """The TLS client context: verification on unless switched off on purpose, TLS 1.2 at least."""
    made = ssl_context(options.tls, context.base_dir)
    if isinstance(made, ssl.SSLContext):
        return made
    # ssl_context() answers False for "no verification" (what aiohttp wants); a stream needs a context.
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if options.tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    return unverified


def _peer(sock: socket.socket) -> str:
    host, port = sock.getpeername()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _local(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("sockname")
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
