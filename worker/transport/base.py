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
    """What came back from one POST: the whole body, never a prefix.

    ``request_written`` is False when the answer came before any byte of the request
    body was written (a server refusing early): Marketo cannot have acted on it."""

    status: int
    content_type: str | None
    body: bytes
    request_written: bool = True


class Transport(Protocol):
    """Posts one request body and reads the whole reply. Raises TransportError when the
    request never left, and an OutcomeUnknown branch (CallTimeout, ReplyLost,
    ProtocolError) when it was written but no whole reply came back."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply: ...

    async def get(self, url: str, headers: Mapping[str, str]) -> HttpReply:
        """A GET (REST describe), with the same errors; ``request_written`` is True once
        the request's headers left."""
        ...

    async def close(self) -> None: ...
