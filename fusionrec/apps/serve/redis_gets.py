"""Pipelined ``GET`` over one Redis connection: the serving API's hot read, at a fifth of redis-py's CPU per call.

redis-py's asyncio client takes a pooled connection, packs, writes, awaits and parses per command (about 130 µs of
CPU on this machine); at 1,000 reads/s that alone is an eighth of a core. This client keeps one connection, writes
each ``GET`` as it comes and resolves the callers' futures in order as replies arrive (Redis answers a connection's
commands in order), parsing with hiredis, the C parser redis-py itself uses. Only ``GET`` goes through it; every
other command of the API uses redis-py. The URL, password, TLS CA and database are the settings' own.

A lost connection fails the reads in flight with :class:`redis.exceptions.ConnectionError` (the API answers 503)
and the next read reconnects. A caller that gives up (``asyncio.timeout``) leaves its slot in the queue, so the
replies that follow still reach their callers.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from fusionrec.contracts.settings import RedisSettings

__all__ = ["CLIENT_NAME", "PipelinedGets"]

#: The connection's name in ``CLIENT LIST``.
CLIENT_NAME = b"fusionrec-api-gets"


def _pack(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.pending: deque[asyncio.Future] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader, pending = self.reader, self.pending
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            fut = pending.popleft()
            if fut.done():  # its caller gave up
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(ResponseError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        self.transport = None
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(self.lost)


class PipelinedGets:
    """``await gets.get(key)``: the value or None, over one pipelined connection (opened on first use)."""

    def __init__(self, settings: RedisSettings, connect_timeout: float = 2.0):
        params = parse_url(settings.url)
        self.path: str | None = params.get("path")
        self.host: str = params.get("host", "127.0.0.1")
        self.port: int = params.get("port", 6379)
        self.db: int = int(params.get("db") or 0)
        self.username: str | None = params.get("username")
        self.password: str | None = params.get("password")
        if settings.password is not None:
            self.password = settings.password.get_secret_value()
        self.tls: ssl.SSLContext | None = None
        if settings.url.startswith("rediss://"):
            self.tls = ssl.create_default_context(cafile=str(settings.ssl_ca_certs) if settings.ssl_ca_certs else None)
        self.connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and self._protocol.transport is not None:
                return self._protocol
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.connect_timeout):
                    if self.path:
                        _, protocol = await loop.create_unix_connection(_Protocol, self.path)
                    else:
                        _, protocol = await loop.create_connection(_Protocol, self.host, self.port, ssl=self.tls)
                    setup = []
                    if self.password is not None:
                        auth = [self.username.encode()] if self.username else []
                        setup.append(_pack(b"AUTH", *auth, self.password.encode()))
                    if self.db:
                        setup.append(_pack(b"SELECT", str(self.db).encode()))
                    setup.append(_pack(b"CLIENT", b"SETNAME", CLIENT_NAME))
                    for command in setup:
                        await self._send(protocol, command)
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc or type(exc).__name__}") from None
            self._protocol = protocol
            return protocol

    @staticmethod
    def _send(protocol: _Protocol, command: bytes) -> asyncio.Future:
        if protocol.transport is None:
            raise protocol.lost or RedisConnectionError("not connected to Redis")
        fut = asyncio.get_running_loop().create_future()
        protocol.pending.append(fut)
        protocol.transport.write(command)
        return fut

    async def get(self, key: str) -> Any:
        protocol = await self._connection()
        kb = key.encode()
        return await self._send(protocol, b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(kb), kb))

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
