"""MockTransport: the wire seam's test double (httpx's MockTransport): it calls
``handler(body, headers)`` in-process, a simulator handler or a scripted reply."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping

from worker.transport.base import HttpReply

Handler = Callable[[bytes, Mapping[str, str]], HttpReply | Awaitable[HttpReply]]


class MockTransport:
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

    async def get(self, url: str, headers: Mapping[str, str]) -> HttpReply:
        """A GET reaches the same handler, with an empty body."""
        return await self.post(url, b"", headers)

    async def close(self) -> None:
        return None
