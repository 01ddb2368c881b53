"""How replies travel: whole, or in pieces with gaps, as over a WAN behind a gateway.

Real Marketo is TLS over a WAN: a client that reads a socket once gets a prefix of the reply,
the rest arrives later. With ``reply_chunk_bytes`` > 0 every reply that carries a body (both
APIs, identity, describe, the HTML gateway pages, ?WSDL, aiohttp's own 404/405 pages) is sent
by :func:`write_in_pieces` under a correct Content-Length, ``reply_chunk_gap_s`` apart. The
admin API is the test harness, not the wire: its replies always go out whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from marketo_sim.config import SimConfig

#: Paths whose replies are never cut (the admin API).
ADMIN_PREFIX: Final = "/admin/"
_NOT_COPIED: Final = frozenset({hdrs.CONTENT_LENGTH.lower(), hdrs.TRANSFER_ENCODING.lower()})


class Wire(Protocol):
    """What the middleware needs of the simulator: its live config and its sleep."""

    @property
    def config(self) -> SimConfig: ...

    async def sleep(self, seconds: float) -> None: ...


def pieces(body: bytes, size: int) -> list[bytes]:
    """``body`` cut into consecutive pieces of at most ``size`` bytes (``size`` 0: whole)."""
    if size < 0:
        raise ValueError("size must be >= 0")
    if not body:
        return []
    if size == 0:
        return [body]
    return [body[start : start + size] for start in range(0, len(body), size)]


async def write_in_pieces(
    request: web.Request,
    response: web.Response,
    body: bytes,
    *,
    chunk_bytes: int,
    gap_s: float,
    sleep: Callable[[float], Awaitable[None]],
) -> web.StreamResponse:
    """Send ``body`` with the status and headers of ``response`` as a StreamResponse with its
    Content-Length, in pieces of at most ``chunk_bytes``: drain after each write,
    ``sleep(gap_s)`` between two. A client that goes away mid-reply ends the writing quietly
    (as a closed socket would)."""
    stream = web.StreamResponse(status=response.status, reason=response.reason)
    for name, value in response.headers.items():
        if name.lower() not in _NOT_COPIED:
            stream.headers.add(name, value)
    stream.content_length = len(body)
    with contextlib.suppress(ConnectionError):
        await stream.prepare(request)
        for index, piece in enumerate(pieces(body, chunk_bytes)):
            if index:
                await sleep(gap_s)
            await stream.write(piece)
            await request.writer.drain()
        await stream.write_eof()
    return stream


def middleware(wire: Wire) -> Middleware:
    """An aiohttp middleware that sends every non-admin reply body in pieces when
    ``wire.config.reply_chunk_bytes`` > 0 (read per request: patchable at runtime)."""

    @web.middleware
    async def in_pieces(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own pages (404, 405, ...) travel too
            response = exc
        config = wire.config
        body = response.body if isinstance(response, web.Response) else None
        if (
            config.reply_chunk_bytes <= 0
            or not isinstance(response, web.Response)
            or not isinstance(body, bytes | bytearray)
            or not body
            or response.prepared
            or request.method == hdrs.METH_HEAD
            or request.path.startswith(ADMIN_PREFIX)
        ):
            if isinstance(response, web.HTTPException):
                raise response
            return response
        return await write_in_pieces(
            request,
            response,
            bytes(body),
            chunk_bytes=config.reply_chunk_bytes,
            gap_s=config.reply_chunk_gap_s,
            sleep=wire.sleep,
        )

    return in_pieces
