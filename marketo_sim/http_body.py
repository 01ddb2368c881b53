"""Reading a request body with a size cap (both protocols)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

_READ_CHUNK: Final = 64 * 1024


async def read_limited(request: web.Request, max_bytes: int) -> bytes | None:
    """The request body, or None when it is longer than ``max_bytes``."""
    if request.content_length is not None and request.content_length > max_bytes:
        return None
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(_READ_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
