"""The wire seam: a Transport posts bytes and returns the reply. The real one uses
one aiohttp ClientSession per worker process; StubTransport calls a function
(a simulator handler or a test double) with no network in between."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from worker.errors import CallTimeout, ProtocolError, TransportError


@dataclass(frozen=True, slots=True)
class HttpReply:
    """What came back from one POST."""

    status: int
    content_type: str | None
    body: bytes


class Transport(Protocol):
    """Posts one request body. Raises TransportError when no reply arrives."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply: ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """The production transport: explicit timeouts and a cap on the reply size."""

    def __init__(self, session: aiohttp.ClientSession, *, max_response_bytes: int) -> None:
        self.session = session
        self.max_response_bytes = max_response_bytes

    @classmethod
    def create(
        cls,
        *,
        request_timeout_s: float,
        connect_timeout_s: float,
        max_response_bytes: int,
        max_connections: int = 100,
    ) -> AiohttpTransport:
        """Make the session; call inside the event loop that will use it."""
        timeout = aiohttp.ClientTimeout(
            total=request_timeout_s, sock_connect=connect_timeout_s, sock_read=request_timeout_s
        )
        connector = aiohttp.TCPConnector(limit=max_connections, enable_cleanup_closed=True)
        session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, raise_for_status=False
        )
        return cls(session, max_response_bytes=max_response_bytes)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        try:
            async with self.session.post(url, data=body, headers=dict(headers)) as response:
                content = await response.content.read(self.max_response_bytes + 1)
                if len(content) > self.max_response_bytes:
                    raise ProtocolError(f"response larger than {self.max_response_bytes} bytes")
                return HttpReply(response.status, response.headers.get("Content-Type"), content)
        except TimeoutError:
            raise CallTimeout("timed out waiting for Marketo") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"HTTP exchange failed: {exc.__class__.__name__}") from None

    async def close(self) -> None:
        await self.session.close()


Handler = Callable[[bytes, Mapping[str, str]], HttpReply | Awaitable[HttpReply]]


class StubTransport:
    """Calls ``handler(body, headers)`` in-process; records every request body."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        self.requests.append(body)
        reply = self.handler(body, headers)
        if inspect.isawaitable(reply):
            reply = await reply
        await asyncio.sleep(0)
        assert isinstance(reply, HttpReply)
        return reply

    async def close(self) -> None:
        return None
