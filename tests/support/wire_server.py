"""A scripted HTTP/1.1 server on a real socket, for what loopback never does by itself:
replies written in pieces with gaps, a gateway that answers 504 after reading the
request, a connection dropped after the request was read, a reply cut short.

Each accepted request is handed to a ``Script`` that returns the reply's plan, or to an
async ``Handler`` that also sees the request's headers (a scripted Marketo behind the
socket); the server records every request body, so a test counts what reached
"Marketo"."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDict


@dataclass(frozen=True, slots=True)
class Reply:
    """How one request is answered. ``pieces`` > 1 writes the body in that many parts,
    ``gap_s`` apart; ``cut_at`` stops after that many body bytes and closes (a reply cut
    short, its Content-Length promising more); ``drop`` closes without any answer."""

    status: int = 200
    content_type: str = "text/xml; charset=utf-8"
    body: bytes = b""
    pieces: int = 1
    gap_s: float = 0.0
    cut_at: int | None = None
    drop: bool = False
    chunked: bool = False


Script = Callable[[bytes], Reply]
#: ``handler(body, headers)``: the headers as sent (names case-insensitive).
Handler = Callable[[bytes, Mapping[str, str]], Awaitable[Reply]]


@dataclass
class WireServer:
    """The running server: its URL and every request body it read."""

    url: str
    requests: list[bytes] = field(default_factory=list)


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, CIMultiDict[str]] | None:
    """The next request's body and headers, or None when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    headers: CIMultiDict[str] = CIMultiDict()
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            headers.add(name.strip().decode("latin-1"), value.strip().decode("latin-1"))
    length = int(headers.get("Content-Length", "0"))
    return await reader.readexactly(length), headers


async def _answer(writer: asyncio.StreamWriter, reply: Reply) -> bool:
    """Write one reply; False when the connection is to be closed afterwards."""
    if reply.drop:
        return False
    head = [
        f"HTTP/1.1 {reply.status} X",
        f"Content-Type: {reply.content_type}",
        "Transfer-Encoding: chunked" if reply.chunked else f"Content-Length: {len(reply.body)}",
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    body = reply.body if reply.cut_at is None else reply.body[: reply.cut_at]
    size = max(1, -(-len(body) // max(1, reply.pieces)))
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if reply.chunked else piece)
        await writer.drain()
        if start + size < len(body) and reply.gap_s:
            await asyncio.sleep(reply.gap_s)
    if reply.cut_at is not None:
        return False
    if reply.chunked:
        writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


@contextlib.asynccontextmanager
async def wire_server(
    script: Script | None = None, *, handler: Handler | None = None
) -> AsyncIterator[WireServer]:
    """Serve ``script`` (or ``handler``, one of them) on a free port of 127.0.0.1 for the
    duration of the block."""
    if (script is None) == (handler is None):
        raise TypeError("wire_server takes a script or a handler, one of them")
    server_state = WireServer("")

    async def plan(body: bytes, headers: Mapping[str, str]) -> Reply:
        if handler is not None:
            return await handler(body, headers)
        assert script is not None
        return script(body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                body, headers = request
                server_state.requests.append(body)
                if not await _answer(writer, await plan(body, headers)):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server_state.url = f"http://127.0.0.1:{port}"
    try:
        yield server_state
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
