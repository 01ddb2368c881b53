"""The wire seam: a Transport posts bytes and returns the reply.

The real one (:class:`~worker.transport.aiohttp_transport.AiohttpTransport`) uses one
aiohttp ClientSession per worker process; :class:`~worker.transport.mock.MockTransport`
calls a function (a simulator handler or a test double) with no network in between."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


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
