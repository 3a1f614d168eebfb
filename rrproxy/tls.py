"""TLS terminated in the workers, on any event loop: the ssl module's MemoryBIO over a
worker Transport (bytes in, bytes out), so trio and asyncio share one implementation.

Each worker reads the certificate and key when it starts, so a rolling reload
(SIGHUP) picks up renewed ones. A client gets --ssl-handshake-timeout to finish the
handshake (a slowloris of the handshake is cut off); the handshake begins with the
first bytes the worker reads, which is also when the front lets go of the
connection.
"""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING, Any

from .config import ConfigError, WorkerConfig
from .errors import ClientDisconnected

if TYPE_CHECKING:
    from .worker.backend import Backend, Transport

_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_READ = 64 * 1024


def server_context(config: WorkerConfig) -> ssl.SSLContext:
    """The context for --ssl-*; ConfigError naming what is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(
            config.ssl_certfile or "", config.ssl_keyfile, config.ssl_keyfile_password
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--ssl-certfile/--ssl-keyfile: {exc}") from None
    if config.ssl_ca_certs:
        try:
            context.load_verify_locations(config.ssl_ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ssl-ca-certs: {exc}") from None
    context.verify_mode = _REQS[config.ssl_cert_reqs]
    if config.ssl_ciphers:
        try:
            context.set_ciphers(config.ssl_ciphers)
        except ssl.SSLError as exc:
            raise ConfigError(f"--ssl-ciphers: {exc}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context


class TLSTransport:
    """A Transport that encrypts over another one. The server handshake runs on the
    first receive() or send(), within the handshake timeout."""

    __slots__ = (
        "_backend",
        "_handshaken",
        "_in",
        "_inner",
        "_notified",
        "_out",
        "_ssl",
        "_timeout",
        "client",
    )

    def __init__(
        self,
        inner: Transport,
        context: ssl.SSLContext,
        backend: Backend,
        handshake_timeout: float,
    ) -> None:
        self._inner = inner
        self._backend = backend
        self._timeout = handshake_timeout
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self._handshaken = False
        self._notified = False
        self.client = inner.client

    @property
    def inner(self) -> Transport:
        """The transport below, carrying the ciphertext (the socket's)."""
        return self._inner

    def push_ciphertext(self, data: bytes) -> None:
        """Bytes read from below before TLS took over (after a PROXY header)."""
        self._in.write(data)

    def server_address(self) -> tuple[str, int] | None:
        return self._inner.server_address()

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            await self._inner.send(data)

    async def _handshake(self) -> None:
        with self._backend.move_on_after(self._timeout) as scope:
            while True:
                try:
                    self._ssl.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._flush()
                    data = await self._inner.receive()
                    if not data:
                        raise ClientDisconnected("closed during the TLS handshake") from None
                    self._in.write(data)
                except ssl.SSLError as exc:
                    await self._flush_quietly()  # the alert tells the client why
                    raise ClientDisconnected(f"TLS handshake failed: {exc.reason}") from None
        if scope.cancelled_caught:
            raise ClientDisconnected("TLS handshake not finished in time")
        self._handshaken = True
        await self._flush()

    async def _flush_quietly(self) -> None:
        try:
            await self._flush()
        except ClientDisconnected:
            pass

    async def receive(self) -> bytes:
        """Decrypted bytes; b"" on the client's close_notify, at EOF, or when the TLS
        stream breaks. ClientDisconnected if the handshake fails or times out."""
        if not self._handshaken:
            await self._handshake()
        while True:
            try:
                return self._ssl.read(_READ)
            except ssl.SSLWantReadError:
                await self._flush()  # TLS 1.3 session tickets, key updates
                data = await self._inner.receive()
                if not data:
                    return b""
                self._in.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLError):
                return b""  # close_notify, or a broken stream: the end either way

    async def send(self, data: bytes) -> None:
        """Encrypt `data` and send the records (after the handshake, if it has not
        happened yet)."""
        if not self._handshaken:
            await self._handshake()
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            raise ClientDisconnected(f"TLS write failed: {exc}") from None
        await self._flush()

    async def sendfile(self, file: Any, offset: int, count: int) -> int:
        """No sendfile through TLS: the file in blocks, encrypted."""
        sent = 0
        fd = file.fileno()
        while sent < count:
            block = os.pread(fd, min(_READ * 4, count - sent), offset + sent)
            if not block:
                break
            await self.send(block)
            sent += len(block)
        return sent

    async def close_notify(self) -> None:
        """Send TLS's close_notify (once; not waiting for the client's)."""
        if not self._handshaken or self._notified:
            return
        self._notified = True
        try:
            self._ssl.unwrap()
        except ssl.SSLError:
            pass  # SSLWantReadError: ours is written, the peer's is not awaited
        try:
            await self._flush()
        except (ClientDisconnected, OSError):
            pass

    def client_gone(self) -> bool:
        return self._inner.client_gone()

    def shutdown_write(self) -> None:
        """The socket's half-close only: call close_notify() first for TLS's own."""
        self._inner.shutdown_write()

    def close(self) -> None:
        self._inner.close()
